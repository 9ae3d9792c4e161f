"""lakeloop's MLP: its forward is its layers in order, with dropout only while training."""

from __future__ import annotations

import torch

from pipelines.core.network import TabularMLP


def test_the_forward_is_the_layers_in_order_and_drops_units_only_while_training() -> None:
    torch.manual_seed(0)
    module, features = TabularMLP(12, 3, hidden=32, depth=2, dropout=0.5), torch.randn(64, 12)
    module.eval()
    with torch.inference_mode():
        assert torch.equal(module(features), module.net(features))  # the container: every layer, dropout an identity
    module.train()
    torch.manual_seed(1)
    first = module(features)
    torch.manual_seed(1)
    assert torch.equal(first, module.net(features))  # the same dropout mask as the container draws
    assert not torch.allclose(first, module(features))  # another mask: dropout ran
