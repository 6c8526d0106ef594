// The Ratings panel: rate judged test responses on the judge's precision scale (1-100) or pass/fail at a ζ
// (duo/app/review/ratings.py). The judge's own score is shown only once a response is rated.
duo.register("ratings", {
  filter: "unrated",

  async render(main) {
    const data = await duo.api("ratings", "list", {filter: this.filter, limit: 20});
    const pick = duo.el("select", {id: "ratings-filter", onchange: e => { this.filter = e.target.value; this.render(main); }},
      [["unrated", "not rated yet"], ["rated", "rated"], ["", "all"]].map(([v, t]) => duo.el("option", {value: v}, t)));
    pick.value = this.filter;
    const c = data.counts;
    const bar = duo.el("div", {class: "bar"}, pick,
      duo.el("span", {class: "counts", id: "ratings-counts"},
             `${c.rated} rated · ${c.unrated} to rate (${c.judged} judged this cycle) → ${data.ratings}`));
    const parts = [bar, this.agreement(data)];
    const list = duo.el("div", {id: "ratings-items"});
    if (!data.items.length) {
      list.append(duo.el("div", {class: "empty"}, c.judged || c.rated
        ? "Nothing here: change the filter." : "No judged test responses yet: run a cycle (make cycle), then come back."));
    }
    for (const item of data.items) list.append(this.card(item, data.zetas, main));
    main.replaceChildren(...parts, list);
  },

  agreement(data) {
    const a = data.agreement;
    const box = duo.el("div", {class: "note", id: "ratings-agreement"});
    if (!a || !a.n) {
      box.append("Rate responses from the top (a random sample): once a few are rated, the judge's agreement with you shows here.");
      return box;
    }
    const f = v => v === null || v === undefined ? "n/a" : (v >= 0 ? "+" : "") + v.toFixed(2);
    const kappas = data.zetas.map(z => `κ@${z} ${f(a["kappa_c" + z].value)} (n ${a["kappa_c" + z].n})`).join(" · ");
    box.append(`Judge panel vs your ratings, this cycle's judgments: ${a.n} rated · Spearman ρ ${f(a.spearman.value)} · ${kappas}` +
               " (the gate reads what the evaluate stage computed: make cycle after rating)");
    return box;
  },

  card(item, zetas, main) {
    const turns = item.messages.map(m => duo.el("div", {class: `turn ${m.role === "developer" ? "system" : m.role}`},
                                                duo.el("span", {class: "role"}, m.role), m.content));
    const error = duo.el("span", {class: "err"});
    const rate = async (body) => {
      error.textContent = "";
      try {
        await duo.api("ratings", "rate", {key: item.key, ...body});
        await this.render(main);
      } catch (e) { error.textContent = e.message; }
    };
    const score = duo.el("input", {type: "number", class: "score", min: 1, max: 100, step: 1, placeholder: "1-100",
                                   "aria-label": "precision score 1-100", value: item.score ?? ""});
    const slider = duo.el("input", {type: "range", class: "slider", min: 1, max: 100, value: item.score ?? 50,
                                    "aria-label": "precision score slider"});
    slider.addEventListener("input", () => { score.value = slider.value; });
    score.addEventListener("input", () => { if (score.value) slider.value = score.value; });
    const save = () => {
      const n = Number(score.value);
      if (!Number.isInteger(n) || n < 1 || n > 100) { error.textContent = "a score is a whole number 1-100"; return; }
      rate({score: n});
    };
    score.addEventListener("keydown", e => { if (e.key === "Enter") save(); });
    const verdicts = zetas.flatMap(z => [
      duo.el("button", {class: `pass pass-${z}`, onclick: () => rate({verdict: "pass", zeta: z})}, `Pass @${z}`),
      duo.el("button", {class: `fail fail-${z}`, onclick: () => rate({verdict: "fail", zeta: z})}, `Fail @${z}`)]);
    const given = item.rated
      ? duo.el("span", {class: "given"}, item.score !== null ? `your score ${item.score}` : `your verdict: ${item.verdict} @${item.zeta}`,
               " · judge ", duo.el("b", {class: "judge-score"}, item.judge === null ? "not scored this cycle" : String(item.judge)))
      : "";
    return duo.el("div", {class: `card rcard ${item.rated ? "accepted" : ""}`, "data-key": item.key,
                          "data-rated": String(item.rated)},
      duo.el("div", {class: "meta"},
        duo.el("span", {class: `badge ${item.rated ? "accepted" : ""}`}, item.rated ? "rated" : "to rate"),
        duo.el("span", {}, item.task), duo.el("span", {}, `prompt ${item.prompt_id}`),
        item.cycle !== null && item.cycle !== undefined ? duo.el("span", {}, `cycle ${item.cycle}`) : "",
        item.current ? "" : duo.el("span", {class: "edited"}, "from an earlier cycle"), given),
      turns,
      duo.el("div", {class: "turn reference"}, duo.el("span", {class: "role"}, "reference (written by a person)"), item.reference),
      duo.el("div", {class: "turn assistant"}, duo.el("span", {class: "role"}, "local model's response"), item.response),
      duo.el("div", {class: "row"},
        duo.el("span", {class: "scale"}, "Precision: does it answer the instruction accurately and relevantly? 1 = not at all, 100 = fully"),
      ),
      duo.el("div", {class: "row"}, slider, score,
        duo.el("button", {class: "accept save-score", onclick: save}, "Save score"), verdicts,
        item.rated ? duo.el("button", {class: "undo", onclick: () => rate({clear: true})}, "Clear") : "",
        error));
  },
});
