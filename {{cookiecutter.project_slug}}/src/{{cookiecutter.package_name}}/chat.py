"""`chat`: talk to the trained model in the terminal, with no Python to write.

The model is the base plus the trained adapter (`<train.output_dir>/adapter`, or --adapter),
or a full model directory (--model: what `merge` writes, or any local model). Conversations are
rendered by the same code as training (`data.chat.render_prompt`): the tokenizer saved with the
adapter carries the chat template training used (ChatML where the base had none), and a system
prompt is merged into the first user turn where the template has no system role. So the model
sees its prompts exactly as it saw its training examples.

Two ways to run: `--prompt TEXT` answers once and prints the answer (for scripts); without it,
a prompt loop reads lines from stdin until EOF or /exit, keeping the conversation, and streams
each answer as it is generated. Greedy decoding unless --temperature is above 0, so the same
question gets the same answer (and the one `evaluate` scored).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .data import DataError, ensure_chat_template
from .data.chat import render_prompt
from .model import loading

EXIT_OK = 0
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C: --prompt stopped before it had an answer
COMMANDS_HELP = "/reset clears the conversation, /exit or Ctrl-D leaves"


def load(params, model_dir: str | None = None, adapter_dir: str | None = None, log=print):
    """(model, tokenizer, device, what was loaded) for a model directory or base + adapter."""
    if model_dir is not None and adapter_dir is not None:
        raise DataError("--model and --adapter: pass one (a merged model has its adapter inside)")
    device = loading.resolve_device(params.compute.device)
    if model_dir is not None:
        path = Path(model_dir)
        if not path.is_dir():
            raise loading.ModelNotFound(f"--model {model_dir}: no such directory (`merge` writes one; or leave --model out to use the adapter)")
        if not (path / "config.json").is_file():
            raise loading.ModelNotFound(f"--model {model_dir}: not a model directory (no config.json)")
        params = params.model_copy(deep=True)
        params.model.base = str(path)
        log(f"loading {path} on {device}")
        # A merged model is 16-bit: never quantized again, whatever model.method says.
        model = loading.load_base_model(params, device, quantize=False).eval()
        tokenizer, source = loading.load_tokenizer(str(path)), str(path)
    else:
        adapter = Path(adapter_dir or Path(params.train.output_dir) / "adapter")
        if not (adapter / "adapter_config.json").is_file():
            raise DataError(f"{adapter}: no trained adapter; train first (`train`, or `smoke` then chat --smoke), or pass --model DIR")
        log(f"loading {params.model.base} + {adapter} on {device}")
        model = loading.load_trained(params, adapter, device)
        # The tokenizer saved with the adapter: the chat template training rendered with.
        tokenizer, source = loading.load_tokenizer(str(adapter)), str(adapter)
    model.config.use_cache = True  # loading turns the KV cache off for training; generation needs it
    ensure_chat_template(tokenizer)
    return model, tokenizer, device, source


class Conversation:
    """The messages so far and how to answer the next one."""

    def __init__(self, model, tokenizer, device, system: str | None = None, max_new_tokens: int = 96,
                 temperature: float = 0.0, show_prompt=None):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.system, self.max_new_tokens, self.temperature = system, max_new_tokens, temperature
        self.show_prompt = show_prompt  # a callable that gets each rendered prompt (--show-prompt)
        self.messages: list[dict] = []
        self.cut_short = False  # the last answer stopped at max_new_tokens, not at its end
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt(self, text: str) -> str:
        """The conversation with `text` as the next user turn, rendered up to the answer."""
        return render_prompt(self.tokenizer, [*self.messages, {"role": "user", "content": text}])

    def answer(self, text: str, streamer=None) -> str:
        import torch

        prompt = self.prompt(text)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        if self.show_prompt:
            self.show_prompt(prompt, inputs["input_ids"].shape[1])
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        stop = self._stop_ids()
        with torch.no_grad():
            output = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=stop, streamer=streamer, **sampling,
            )
        new = output[0, inputs["input_ids"].shape[1] :]
        self.cut_short = len(new) >= self.max_new_tokens and int(new[-1]) not in stop
        reply = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        # Kept only once answered: an interrupted turn leaves the conversation as it was.
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        return reply

    def _stop_ids(self) -> list[int]:
        """The model's own end tokens (Llama 3 lists its end-of-turn there) and the tokenizer's eos."""
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        return list(dict.fromkeys(i for i in [*ids, self.tokenizer.eos_token_id] if i is not None))


def chat(params, model_dir: str | None = None, adapter_dir: str | None = None, prompt: str | None = None,
         system: str | None = None, max_new_tokens: int | None = None, temperature: float = 0.0,
         show_prompt: bool = False, stdin=None, out=None, err=None) -> int:
    """Answer `prompt` once, or hold a conversation on stdin; returns the exit code."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    if temperature < 0:
        raise DataError(f"--temperature {temperature}: must be 0 (greedy) or more")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise DataError(f"--max-new-tokens {max_new_tokens}: must be at least 1")

    def shown(text: str, tokens: int) -> None:
        print(f"--- prompt ({tokens} tokens) ---\n{text}\n--- end of prompt ---", file=err, flush=True)

    try:
        model, tokenizer, device, source = load(params, model_dir, adapter_dir, log=lambda m: print(m, file=err, flush=True))
        conversation = Conversation(model, tokenizer, device, system, max_new_tokens or params.eval.max_new_tokens,
                                    temperature, shown if show_prompt else None)
        if prompt is not None:
            print(conversation.answer(prompt), file=out, flush=True)
            note_cut_short(conversation, err)
            return EXIT_OK
        return interact(conversation, source, stdin, out, err)
    except KeyboardInterrupt:  # Ctrl-C: leave without a traceback
        print(file=err)
        return EXIT_INTERRUPTED if prompt is not None else EXIT_OK


def interact(conversation: Conversation, source: str, stdin, out, err) -> int:
    from transformers import TextStreamer

    if stdin is sys.stdin and stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    decoding = f"temperature {conversation.temperature}" if conversation.temperature > 0 else "greedy"
    print(f"chatting with {source} ({decoding}, at most {conversation.max_new_tokens} new tokens); {COMMANDS_HELP}",
          file=err, flush=True)
    streamer = TextStreamer(conversation.tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        text = read_line(">>> ", stdin, out)
        if text is None or text.strip() in ("/exit", "/quit"):
            return EXIT_OK
        if text.strip() == "/reset":
            conversation.reset()
            print("(conversation cleared)", file=err, flush=True)
            continue
        if not text.strip():
            continue
        # TextStreamer prints to sys.stdout; print the answer whole where output goes elsewhere.
        reply = conversation.answer(text, streamer if out is sys.stdout else None)
        if out is not sys.stdout:
            print(reply, file=out)
        note_cut_short(conversation, err)
        print(file=out, flush=True)


def note_cut_short(conversation: Conversation, err) -> None:
    # A new user's first question often gets a longer answer than eval.max_new_tokens allows.
    if conversation.cut_short:
        print(f"(cut at {conversation.max_new_tokens} new tokens: --max-new-tokens N allows longer answers)", file=err, flush=True)


def read_line(prompt: str, stdin, out) -> str | None:
    """One line of input, or None at EOF (Ctrl-D, or the end of piped input)."""
    if stdin is sys.stdin and out is sys.stdout:
        try:
            return input(prompt)
        except EOFError:
            print(file=out)
            return None
    print(prompt, end="", file=out, flush=True)
    line = stdin.readline()
    return line.rstrip("\n") if line else None
