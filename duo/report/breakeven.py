"""The paper's economic argument for one user: what the service would cost at your daily traffic
(litellm's bundled price table) against a local box running the GGUF, and the months until the
box has paid for itself.

Model (every input is a `report.*` param or a measured figure):
- service per month = (daily_tokens_in x input price + daily_tokens_out x output price) x days/month;
- boxes = ceil(daily_tokens_out / (measured tokens/s x 86,400)): the local box must *generate* the
  day's responses. The rate is what `make serve` sustains with 8 concurrent clients, measured by
  `make bench SECTION=serve` (serve.tokens_per_s_8 in metrics/bench.json, prompts included); where that
  was never measured, the infer stage's batched rate (metrics/infer.json), which a server answering
  separate requests may not reach, and the report says which. At least one box;
- local per month = boxes x hardware_watts x 24 h x usd_per_kwh x days/month (always on);
- upfront = boxes x hardware_usd + what the migration has cost in service calls so far;
- months = upfront / (service per month - local per month); "never" when that saving is <= 0.
"""
from __future__ import annotations

import math
import os

DAYS_PER_MONTH = 365.25 / 12
SECONDS_PER_DAY = 86_400


def token_prices(model: str | None) -> tuple[float, float] | None:
    """(USD per input token, USD per output token) from litellm's bundled table, or None when the
    model has no price there (local models, unknown names). Never fetches the table."""
    if not model or model == "local" or model.startswith("local:"):
        return None
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    try:
        info = litellm.get_model_info(model.split("@", 1)[0])
    except Exception:  # litellm raises a bare Exception for an unmapped model
        return None
    p_in, p_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if p_in is None or p_out is None:
        return None
    return float(p_in), float(p_out)


SERVE_RATE = "serve.tokens_per_s_8"


def local_rate(bench: dict | None, infer: dict | None) -> tuple[float | None, str]:
    """(tokens/s, where it came from): the measured serve rate, else the infer stage's batched rate."""
    if (bench or {}).get(SERVE_RATE):
        return bench[SERVE_RATE], f"make serve, 8 concurrent clients (metrics/bench.json {SERVE_RATE})"
    if (infer or {}).get("tokens_per_s"):
        return infer["tokens_per_s"], ("the infer stage's batched rate (metrics/infer.json); the serve rate "
                                       "was never measured: make bench SECTION=serve")
    return None, "not measured"


def compute(p, prices: tuple[float, float] | None, tokens_per_s: float | None,
            migration_usd: float | None = None, price_model: str | None = None, rate_source: str = "") -> dict:
    """Every figure of the break-even; `p` is the `report` params section."""
    out: dict = {"price_model": price_model, "daily_tokens_in": p.daily_tokens_in,
                 "daily_tokens_out": p.daily_tokens_out, "hardware_usd": p.hardware_usd,
                 "hardware_watts": p.hardware_watts, "usd_per_kwh": p.usd_per_kwh,
                 "tokens_per_s": tokens_per_s, "tokens_per_s_source": rate_source, "migration_usd": migration_usd,
                 "price_in_per_mtok": None, "price_out_per_mtok": None}
    if tokens_per_s and tokens_per_s > 0:
        busy_days = p.daily_tokens_out / (tokens_per_s * SECONDS_PER_DAY)
        out["compute_days_per_day"] = round(busy_days, 4)
        out["boxes"] = max(1, math.ceil(busy_days))
    else:
        out["compute_days_per_day"] = None
        out["boxes"] = 1  # throughput unknown: the figures below assume one box carries the traffic
    boxes = out["boxes"]
    local = boxes * p.hardware_watts / 1000 * 24 * p.usd_per_kwh * DAYS_PER_MONTH
    upfront = boxes * p.hardware_usd + (migration_usd or 0.0)
    out["local_usd_per_month"], out["upfront_usd"] = round(local, 2), round(upfront, 2)
    if prices is None:
        out |= {"service_usd_per_month": None, "saving_usd_per_month": None, "months": None,
                "verdict": "no price known"}
        return out
    p_in, p_out = prices
    out["price_in_per_mtok"], out["price_out_per_mtok"] = round(p_in * 1e6, 4), round(p_out * 1e6, 4)
    service = (p.daily_tokens_in * p_in + p.daily_tokens_out * p_out) * DAYS_PER_MONTH
    saving = service - local
    out["service_usd_per_month"], out["saving_usd_per_month"] = round(service, 2), round(saving, 2)
    if saving <= 0:
        out |= {"months": None, "verdict": "never"}
    else:
        out |= {"months": round(upfront / saving, 2), "verdict": "breaks even"}
    return out


def sentence(b: dict) -> str:
    """The result in one plain sentence."""
    if b["verdict"] == "no price known":
        return (f"No price known for '{b['price_model']}' in litellm's price table: set report.price_model "
                f"to the service you would otherwise pay (e.g. gpt-4o) to see the break-even.")
    if b["verdict"] == "never":
        return (f"Never: at this traffic the service costs ${b['service_usd_per_month']:,.2f}/month, no more "
                f"than running the local box (${b['local_usd_per_month']:,.2f}/month).")
    return (f"The local box pays for itself after {b['months']:,.1f} months: ${b['upfront_usd']:,.2f} upfront, "
            f"then ${b['saving_usd_per_month']:,.2f}/month saved against {b['price_model']}.")
