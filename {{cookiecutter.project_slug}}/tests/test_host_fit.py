"""On a CPU, `micro_batch: auto` and `gradient_checkpointing: auto` come from the memory model
against the free RAM (train/host_fit.py), and a real run stays within what it chose.

The free RAM is given to the function (never this machine's); the real run is SmolLM2-135M
with a budget (compute.host_ram_gib) small enough that the choice must give something up, and
its peak RSS is read from the kernel (wait4's ru_maxrss) when it ends.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
from transformers import AutoConfig

from {{ cookiecutter.package_name }} import data
from {{ cookiecutter.package_name }}.config import ConfigError
from {{ cookiecutter.package_name }}.model.fit import Fit
from {{ cookiecutter.package_name }}.train import host_fit

from conftest import PROJECT, cli_overrides

GIB = 2**30
KNOWN_UNDERESTIMATE = 1.15  # a real 512-token run's step RAM / host_fit's estimate, at most (measured 1.12)


@pytest.fixture(scope="module")
def smollm2(real_model):
    return AutoConfig.from_pretrained(real_model)


def need(config, params, micro_batch: int, checkpointed: int) -> float:
    shape, setup = host_fit.cpu_setup(config, params, 4)
    return host_fit.step_ram(shape, replace(setup, micro_batch=micro_batch, checkpointing=checkpointed / shape.layers))


def test_the_choice_follows_the_free_ram(smollm2, make_params):
    params = make_params("model.dtype=float32", "data.max_length=1024", "train.global_batch=8")
    candidates = [8, 4, 2, 1]
    layers = smollm2.num_hidden_layers

    def choose(available):
        return host_fit.choose_cpu_fit(smollm2, params, candidates, "auto", 4, available)[0]

    def just_enough(micro_batch, checkpointed):  # free RAM whose RAM_SHARE is exactly this step's estimate
        return need(smollm2, params, micro_batch, checkpointed) / host_fit.RAM_SHARE

    assert choose(1024 * GIB) == Fit(8, 0)  # plenty: the largest micro-batch, no recomputation
    assert choose(just_enough(8, 0)) == Fit(8, 0)
    assert choose(just_enough(8, 0) * 0.99) == Fit(4, 0)
    assert choose(just_enough(1, 0) * 0.99) == Fit(1, layers // 4)  # one row needs a quarter of the layers checkpointed
    assert choose(just_enough(1, layers // 4) * 0.99) == Fit(1, layers // 2)
    # Past three quarters: every layer, and the largest micro-batch that fits that way again.
    available = just_enough(1, 3 * layers // 4) * 0.99
    largest = next(m for m in candidates if need(smollm2, params, m, layers) <= host_fit.RAM_SHARE * available)
    assert choose(available) == Fit(largest, layers) and largest > 1
    # The SmolLM2 step that peaked at 22.7 GB (4 x 1,024 tokens, no checkpointing) is not chosen on
    # a 16 GB laptop with 12 GiB free.
    laptop = choose(12 * GIB)
    assert laptop.checkpointed > 0 or laptop.micro_batch < 4
    with pytest.raises(ConfigError, match=r"not even one row of data.max_length=1024 tokens fits the free RAM: a step needs about "
                                          r"[\d.]+ GiB with every layer checkpointed, 80% of the 0.5 GiB available"):
        choose(0.5 * GIB)


def test_what_params_yaml_sets_is_kept(smollm2, make_params):
    params = make_params("model.dtype=float32", "data.max_length=1024")
    fit, _ = host_fit.choose_cpu_fit(smollm2, params, [4], False, 4, 1024 * GIB)
    assert fit == Fit(4, 0)
    fit, _ = host_fit.choose_cpu_fit(smollm2, params, [4], True, 4, 1024 * GIB)
    assert fit == Fit(4, smollm2.num_hidden_layers)  # checkpointing: true stays on
    with pytest.raises(ConfigError, match="without|fits the free RAM"):
        host_fit.choose_cpu_fit(smollm2, params, [4], False, 4, 2 * GIB)


def test_a_real_run_stays_within_the_ram_it_chose(real_model, make_params, tmp_path):
    """SmolLM2-135M, rows of 512 tokens, 3 GiB for the step: the choice gives something up, and
    the process's peak RSS stays below what it held at the choice plus the estimate."""
    params = make_params(f"model.base={real_model}", "model.dtype=float32", "data.max_length=512", "train.global_batch=4",
                         "train.micro_batch=auto", "train.gradient_checkpointing=auto", "train.max_steps=1",
                         "train.log_every_steps=1", "compute.host_ram_gib=3", "eval.generations=0")
    data.prepare(params, log=lambda *_: None)
    command = [sys.executable, "-m", "{{ cookiecutter.package_name }}", "train", *cli_overrides(params)]
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})  # one step: the first is the peak
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output[-3000:]
    chosen = re.search(r"on the CPU: (\d+) rows per micro-batch, gradient checkpointing on (\d+) layers; a step needs about "
                       r"([\d.]+) GiB of the ([\d.]+) GiB.*the process held ([\d.]+) GiB", output)
    assert chosen, output[-3000:]
    micro_batch, checkpointed, step_gib, budget_gib, held_gib = chosen.groups()
    assert (int(micro_batch), int(checkpointed)) != (4, 0)  # 4 x 512 without checkpointing needs more than 3 GiB
    assert float(step_gib) <= host_fit.RAM_SHARE * float(budget_gib)
    peak_gib = usage.ru_maxrss * 1024 / GIB
    print(f"peak RSS {peak_gib:.2f} GiB; held {held_gib} GiB at the choice + step estimate {step_gib} GiB")
    # Measured: at 512-token rows the step came out up to ~12% above its estimate (the README
    # says so); this bound fails if the estimate gets any worse than that.
    assert peak_gib <= float(held_gib) + KNOWN_UNDERESTIMATE * float(step_gib)
