"""Facts about the project written in one place: where it lives, and links built from that.

Instructors who fork the course change REPO_URL here and run `lmcourse sync`: every notebook's
"Open in Colab" badge and Colab setup cell are regenerated from it.
"""

from __future__ import annotations

REPO_URL = "https://github.com/lmcourse/lmcourse"  # the course's public repository
BRANCH = "main"                                    # the branch Colab badges open


def colab_url(rel_path: str) -> str:
    """The Colab link that opens `rel_path` (e.g. notebooks/01_lm_math.ipynb) from the repository."""
    if not REPO_URL.startswith("https://github.com/"):
        raise ValueError(f"REPO_URL must be a GitHub URL for Colab links, got {REPO_URL!r}.")
    repo = REPO_URL.removeprefix("https://github.com/").rstrip("/")
    return f"https://colab.research.google.com/github/{repo}/blob/{BRANCH}/{rel_path}"
