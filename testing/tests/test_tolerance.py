import pytest
import torch

from mugv_testing import TOLERANCES, assert_close


def test_within_tolerance_passes():
    x = torch.randn(10, dtype=torch.float64)
    assert_close(x * (1 + 1e-12), x)


def test_reports_errors():
    a = torch.zeros(3, 4)
    b = torch.zeros(3, 4)
    b[1, 2] = 1.0
    with pytest.raises(AssertionError, match=r"1/12 elements.*max abs err 1\.000e\+00 at \(1, 2\)"):
        assert_close(a, b, name="x")


def test_shape_mismatch():
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.zeros(2), torch.zeros(3))


def test_bf16_looser_than_fp32():
    assert TOLERANCES[torch.bfloat16].rtol > TOLERANCES[torch.float32].rtol
    x = torch.randn(100)
    assert_close(x.bfloat16().float(), x, dtype=torch.bfloat16)
    with pytest.raises(AssertionError):
        assert_close(x.bfloat16().float(), x, dtype=torch.float32)
