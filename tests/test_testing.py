import torch

from llmq.testing import rtn_fake_quantize_


def test_rtn_fake_quantize_levels_and_untouched_modules():
    torch.manual_seed(0)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(64, 8, bias=False)])
            self.lm_head = torch.nn.Linear(64, 8, bias=False)

    m = M()
    head = m.lm_head.weight.clone()
    w = m.layers[0].weight.clone()
    rtn_fake_quantize_(m, bits=4, group_size=32)
    q = m.layers[0].weight.reshape(8, 2, 32)
    assert all(len(torch.unique(q[r, g])) <= 16 for r in range(8) for g in range(2))
    step = (w.reshape(8, 2, 32).amax(-1) - w.reshape(8, 2, 32).amin(-1)) / 15
    assert ((q - w.reshape(8, 2, 32)).abs() <= step.unsqueeze(-1) / 2 + 1e-6).all()  # round-to-nearest
    assert torch.equal(m.lm_head.weight, head)
