"""Every call to the service LLM (teacher and judge).

Every call to the service LLM (teacher and judge): duo/service/client.py says what a call survives."""
from duo.service.calls import Reply, Request, Stats
from duo.service.client import Service, from_params
from duo.service.errors import EXIT_STOPPED, ServiceFatal, ServiceStop, scrub
from duo.service.journal import JOURNAL_DIR, Journal, journal_dir, ledger
from duo.service.limits import RateLimiter

__all__ = ["EXIT_STOPPED", "JOURNAL_DIR", "Journal", "RateLimiter", "Reply", "Request", "Service", "ServiceFatal",
           "ServiceStop", "Stats", "from_params", "journal_dir", "ledger", "scrub"]
