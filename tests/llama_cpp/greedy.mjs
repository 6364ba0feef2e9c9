// Greedy continuation of a text by llama.cpp (node-llama-cpp's prebuilt CPU build), with an
// optional LoRA adapter: prints {"prompt": [token ids], "tokens": [generated ids]} as JSON.
//   node greedy.mjs MODEL.gguf "TEXT" N [ADAPTER.gguf]
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const [modelPath, text, count, adapter] = process.argv.slice(2);
const warnings = [];
const llama = await getLlama({
  gpu: false, build: "never", skipDownload: true, usePrebuiltBinaries: true, logLevel: LlamaLogLevel.warn,
  logger: (level, message) => warnings.push(`${level}: ${message}`),
});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const context = await model.createContext({
  contextSize: 256, threads: 1, ...(adapter ? {lora: {adapters: [{filePath: adapter, scale: 1}]}} : {}),
});
const prompt = model.tokenize(text, true);           // special tokens (<|im_start|>, ...) parsed
const tokens = [];
for await (const token of context.getSequence().evaluate(prompt, {temperature: 0})) {
  tokens.push(token);
  if (tokens.length >= Number(count)) break;
}
console.log(JSON.stringify({prompt, tokens, warnings}));
await context.dispose();
await model.dispose();
await llama.dispose();
