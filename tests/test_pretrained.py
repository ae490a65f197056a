import math

import pytest
import torch

from bmlib.train import evaluate


@pytest.mark.slow
def test_pretrained_gpt_cpu_is_cached_and_reloads():
    from bmlib.pretrained import pretrained_gpt

    m1, tok, data = pretrained_gpt("cpu", progress=False)  # trains once, then cached
    m2, _, _ = pretrained_gpt("cpu", progress=False)  # loads the verified checkpoint
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    assert len(tok) == m1.config.vocab_size and data.block_size == m1.config.block_size
    loss = evaluate(m1, data, iters=4, batch_size=8)
    assert loss < math.log(m1.config.vocab_size) - 1.0  # well below a uniform guess
    with pytest.raises(ValueError, match="size"):
        pretrained_gpt("huge")
