"""`shrink` (this package is not named shrink: `zeroshift.shrink` is the function): the cheapest model that keeps a teacher's answers on your images (run.py), its options and
candidate specs (config.py, torch-free), how candidates are made (candidates.py), judged without labels
(score.py) and reported (report.py)."""
from .config import Candidate, ShrinkConfig, parse_candidate

__all__ = ["Candidate", "ShrinkConfig", "parse_candidate", "shrink"]


def shrink(cfg: ShrinkConfig, progress: bool = True) -> dict:
    """See shrinking.run.shrink (imported when called: the package stays torch-free to import)."""
    from .run import shrink as run

    return run(cfg, progress)
