// llama.cpp itself (the prebuilt binaries of the npm package node-llama-cpp) runs a GGUF file.
//   node answers.mjs REQUEST.json   ->  JSON on stdout
// REQUEST: {"node_modules": DIR, "max_tokens": N, "runs": [{"model": FILE.gguf, "items": [...]}, ...]}, each item one of
//   {"messages": [{role, content}, ...]}  answered greedily in a chat session that renders the GGUF's own
//                                          chat template (no template in the file: an error, not a default)
//   {"ids": [token ids]}                   continued greedily from these tokens (no template, no tokenizer)
//   ("max_tokens" in an item overrides the request's)
//   {"text": "..."}                        only tokenized, special tokens parsed (compared with transformers' ids)
// Reply: {"runs": [{"results": [{"answer": text, "tokens": [ids]} | {"ids": [...]}, ...]}, ...]} (one process for all
// the files: loading llama.cpp's library takes longer than running a tiny model)
import { readFile } from "node:fs/promises";
import path from "node:path";
import { pathToFileURL } from "node:url";

const request = JSON.parse(await readFile(process.argv[2], "utf8"));
const entry = path.join(request.node_modules, "node-llama-cpp", "dist", "index.js");
const { getLlama, LlamaChatSession, LlamaCompletion, JinjaTemplateChatWrapper } = await import(pathToFileURL(entry).href);

// The prebuilt CPU build only: never a compile, never a GPU probe.
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const greedy = (item) => ({ temperature: 0, maxTokens: item.max_tokens ?? request.max_tokens });
const runs = [];
for (const run of request.runs) {
  runs.push({ results: await answer(run.model, run.items) });
}
console.log(JSON.stringify({ runs }));
await llama.dispose();

async function answer(modelPath, items) {
const model = await llama.loadModel({ modelPath });
const template = model.fileInfo.metadata?.tokenizer?.chat_template;
const results = [];
for (const item of items) {
  if (item.text !== undefined) {
    results.push({ ids: Array.from(model.tokenize(item.text, true)) });
    continue;
  }
  // One thread: the same answers on any machine, and no spinning thread pool on a busy CI runner.
  const context = await model.createContext({ contextSize: 1024, sequences: 1, threads: 1 });
  const sequence = context.getSequence();
  const tokens = [];
  const onToken = (chunk) => tokens.push(...chunk);
  if (item.ids !== undefined) {
    const completion = new LlamaCompletion({ contextSequence: sequence });
    const answer = await completion.generateCompletion(item.ids, { ...greedy(item), onToken });
    results.push({ answer, tokens });
  } else {
    if (!template) throw new Error(`${modelPath}: no chat template in the GGUF (tokenizer.chat_template)`);
    const chatWrapper = new JinjaTemplateChatWrapper({ template, tokenizer: model.tokenizer });
    const session = new LlamaChatSession({ contextSequence: sequence, chatWrapper });
    const history = item.messages.slice(0, -1).map((m) => (
      m.role === "assistant" ? { type: "model", response: [m.content] } : { type: m.role, text: m.content }));
    session.setChatHistory(history);
    const answer = await session.prompt(item.messages.at(-1).content, { ...greedy(item), onToken });
    results.push({ answer, tokens });
    session.dispose();
  }
  await context.dispose();
}
await model.dispose();
return results;
}
