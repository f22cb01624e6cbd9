"""`chat`: the trained (or merged) model answers in the terminal, through its own chat template."""

import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from {{ cookiecutter.package_name }} import cli, data
from {{ cookiecutter.package_name }}.train import train

from conftest import PARAMS, PROJECT, cli_overrides, run_cli

quiet = {"log": lambda *_: None}
SHOWN_PROMPT = re.compile(r"--- prompt \(\d+ tokens\) ---\n(.*?)\n--- end of prompt ---", re.S)


def chat_process(*args: str, stdin=subprocess.PIPE) -> subprocess.Popen:
    """`chat` as a user starts it, its stdin a pipe we write to (or close)."""
    return subprocess.Popen(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}", "chat", "--set", "compute.device=cpu", *args],
        cwd=PROJECT, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"},
    )


def test_prompt_answers_as_generate_does_on_the_chat_templated_question(real_model, capsys):
    question = "How do I reset my password?"
    code = cli.main(["chat", "--params", str(PARAMS), "--model", str(real_model), "--prompt", question,
                     "--max-new-tokens", "6", "--set", "compute.device=cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]

    tokenizer = AutoTokenizer.from_pretrained(real_model)
    model = AutoModelForCausalLM.from_pretrained(real_model, dtype=torch.float32).eval()

    def greedy(text: str) -> str:
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    # transformers' own rendering of the model's template, not the project's.
    templated = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in templated
    answer = greedy(templated)
    assert printed.out == answer + "\n"
    assert answer != greedy(question)  # the raw question continues otherwise: the template was applied
    assert "(cut at 6 new tokens: --max-new-tokens N allows longer answers)" in printed.err


def test_an_adapter_trained_two_steps_loads_and_answers(make_params, tmp_path, capsys):
    params = make_params("train.max_steps=2", "checkpoint.every_steps=1000", "tracking.system_metrics=false")
    data.prepare(params, **quiet)
    adapter = train(params, **quiet)
    assert adapter == tmp_path / "outputs/adapter"
    base = ["chat", "--params", str(PARAMS), *cli_overrides(params), "--prompt", "My invoice is wrong.", "--max-new-tokens", "5"]

    assert cli.main(base) == 0  # the default adapter: <train.output_dir>/adapter
    greedy = capsys.readouterr()
    assert greedy.out.strip(), greedy.err[-2000:]
    assert f"+ {adapter} on cpu" in greedy.err

    assert cli.main([*base, "--adapter", str(adapter), "--temperature", "0.8", "--system", "Be brief."]) == 0
    assert capsys.readouterr().out.strip()


def test_interactive_chat_keeps_the_conversation_and_stops_at_exit(tiny_model_dir):
    process = chat_process("--model", str(tiny_model_dir), "--max-new-tokens", "4", "--show-prompt")
    out, err = process.communicate("hello\n\nwhat did I say?\n/exit\nnever read\n", timeout=600)
    assert process.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    first, second = SHOWN_PROMPT.findall(err)  # two turns, nothing after /exit
    # A streamed answer after each question, a bare prompt for the empty line, the last one read /exit.
    answer, _ = re.fullmatch(r">>> (.*?)\n\n>>> >>> (.*?)\n\n>>> ", out, re.S).groups()
    assert "hello" in first and "what did I say?" not in first
    # The second prompt is the first exchange (question and the answer printed) plus the new question.
    assert second.startswith(first)
    exchange = second[len(first) :]
    assert answer.strip() and exchange.index(answer.strip()) < exchange.index("what did I say?")


@pytest.mark.parametrize("mode", ["interactive", "prompt"])
def test_ctrl_c_leaves_without_a_traceback(tiny_model_dir, mode):
    """Ctrl-C while waiting for a line ends the chat (0); while answering --prompt, 130 (no answer)."""
    # The tiny random model never stops by itself: 2000 tokens keep it generating long after the signal.
    args = ["--prompt", "hello", "--show-prompt", "--max-new-tokens", "2000"] if mode == "prompt" else []
    process = chat_process("--model", str(tiny_model_dir), *args)
    ready = "--- end of prompt ---" if mode == "prompt" else "chatting with"
    seen = []
    while not seen or ready not in seen[-1]:
        line = process.stderr.readline()
        assert line, f"chat ended before {ready!r}: {''.join(seen)[-2000:]}"
        seen.append(line)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)  # before communicate() closes stdin: an EOF would end the chat too
    out, err = process.communicate()
    assert process.returncode == (130 if mode == "prompt" else 0), err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_missing_adapter_exits_2_with_one_line(tmp_path):
    result = run_cli("chat", "--set", f"train.output_dir={tmp_path / 'outputs'}", "--prompt", "hi")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'outputs/adapter'}: no trained adapter; train first (`train`, or `smoke` then chat --smoke), "
        "or pass --model DIR"
    ]


@pytest.mark.parametrize("case", ["missing", "not a model", "both"])
def test_a_bad_model_directory_exits_2_with_one_line(tmp_path, tiny_model_dir, capsys, case):
    folder = tmp_path / "merged"
    if case == "not a model":
        folder.mkdir()
    extra = ["--adapter", str(tmp_path / "adapter")] if case == "both" else []
    code = cli.main(["chat", "--params", str(PARAMS), "--model", str(folder), *extra, "--prompt", "hi"])
    assert code == 2
    expected = {
        "missing": f"error: --model {folder}: no such directory (`merge` writes one; or leave --model out to use the adapter)",
        "not a model": f"error: --model {folder}: not a model directory (no config.json)",
        "both": "error: --model and --adapter: pass one (a merged model has its adapter inside)",
    }[case]
    assert capsys.readouterr().err.splitlines() == [expected]
