"""The ingest stage: raw preference data in several formats -> one contract pair directory.

``run_ingest(sources, formats, out_dir, config, created_at)`` reads each source (file, folder,
glob or Hugging Face dataset id) with its format adapter, quarantines rows it cannot use
(``quarantine.parquet``: file, line, field, reason, raw) and writes the aggregated pool.
"""

from fgpo_tasks.ingest.adapters import RatedResponse, pair_rated_responses, parse_conversation
from fgpo_tasks.ingest.config import FORMATS, IngestConfig
from fgpo_tasks.ingest.run import QUARANTINE_FILE, run_ingest

__all__ = ["FORMATS", "IngestConfig", "QUARANTINE_FILE", "RatedResponse", "pair_rated_responses",
           "parse_conversation", "run_ingest"]
