"""The installed llama.cpp is the portable build (scripts/setup), and the setup check catches one that is not."""

from __future__ import annotations

import pytest

from actlabel.models import llama_check

pytestmark = pytest.mark.slow


def test_installed_runtime_has_no_instructions_beyond_the_baseline() -> None:
    pytest.importorskip("llama_cpp")
    ok, message = llama_check.check_instructions()
    assert ok, message


def test_the_detector_sees_avx512_and_amx() -> None:
    text = b"  4005d0:\tvmovups %zmm0,(%rax)\n  4005d8:\ttileloadd (%rsi,%rdx,1),%tmm0\n  4005e0:\tvaddps %ymm1,%ymm2,%ymm3\n"
    assert len(llama_check._BEYOND_BASELINE.findall(text)) == 3  # zmm, tileloadd, tmm; not ymm (AVX2)


def test_one_real_decode_in_a_child_process() -> None:
    pytest.importorskip("llama_cpp")
    ok, message = llama_check.check_decode()
    assert ok and "decoded" in message, message
