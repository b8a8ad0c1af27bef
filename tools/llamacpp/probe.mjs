// node tools/llamacpp/probe.mjs < request.json > answer.json
//
// Runs a GGUF file in llama.cpp (node-llama-cpp's prebuilt CPU binaries: no compiler, no download) and answers
// one JSON request on stdin with one JSON object on stdout. tracenas' tests and benchmarks/bench_llamacpp.py
// drive it through tracenas.llamacpp; it is a test/benchmark helper, not part of the installed package.
//
// request: {"model": "x.gguf", "threads": 1, "context": 512, "kv_type": "F32" (optional), "tasks": [task, ...]}
// tasks (each answered in order, in a fresh sequence state):
//   {"op": "meta"}                                   -> {"arch", "n_layer", "chat_template", "bos", "eos"}
//   {"op": "tokenize", "text": "...", "special": false} -> {"tokens": [...], "text": detokenized}
//   {"op": "logits", "tokens": [...]}                -> {"logits": [n_vocab floats] of the last position}
//   {"op": "greedy", "tokens": [...], "n": 32}       -> {"tokens": [n greedy continuation ids]}
//   {"op": "bench", "prompt": 128, "generate": 64, "repeat": 3}
//        -> {"pp_tokens_per_s": [...], "tg_tokens_per_s": [...]} (prompt processing of `prompt` tokens in
//           one batch; then `generate` single-token steps)
import {getLlama, LlamaLogLevel} from "node-llama-cpp";
import {readFileSync} from "node:fs";

const request = JSON.parse(readFileSync(0, "utf8"));
const threads = request.threads ?? 1;
const llama = await getLlama({gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
                              logLevel: LlamaLogLevel.error, maxThreads: threads});
const model = await llama.loadModel({modelPath: request.model, gpuLayers: 0});
const contextSize = request.context ?? 512;
// kv_type "F32" for exactness checks; llama.cpp's default KV cache is F16 (what a user gets, and what we benchmark)
const kv = request.kv_type ? {experimentalKvCacheKeyType: request.kv_type, experimentalKvCacheValueType: request.kv_type} : {};
const context = await model.createContext({contextSize, batchSize: contextSize, threads, sequences: 1, flashAttention: request.flash_attention ?? false, ...kv});
const sequence = context.getSequence();

async function fresh() {
    await sequence.clearHistory();
}

async function lastLogits(tokens) {
    const input = tokens.slice(0, -1).concat([[tokens[tokens.length - 1], {generateNext: {logits: true}}]]);
    const out = await sequence.controlledEvaluate(input);
    const map = out[tokens.length - 1].next.logits;
    const logits = new Array(map.size).fill(null);  // no filter: every token of the vocabulary
    for (const [tok, value] of map) logits[tok] = value;
    return logits;
}

async function greedy(tokens, n) {
    const out = [];
    let input = tokens.slice(0, -1).concat([[tokens[tokens.length - 1], {generateNext: {token: true, options: {temperature: 0}}}]]);
    for (let i = 0; i < n; i++) {
        const res = await sequence.controlledEvaluate(input);
        const tok = res[input.length - 1].next.token;
        out.push(tok);
        input = [[tok, {generateNext: {token: true, options: {temperature: 0}}}]];
    }
    return out;
}

async function bench(task) {
    const vocab = model.vocabularyType ? Math.min(1000, request.vocab ?? 1000) : 1000;
    const prompt = Array.from({length: task.prompt}, (_, i) => (i * 7919 + 13) % vocab);
    const pp = [], tg = [];
    for (let r = 0; r < (task.repeat ?? 3); r++) {
        await fresh();
        let t0 = process.hrtime.bigint();
        await sequence.controlledEvaluate(prompt.slice(0, -1).concat([[prompt[prompt.length - 1], {generateNext: {logits: {filter: {tokens: [0]}}}}]]));
        pp.push(task.prompt / (Number(process.hrtime.bigint() - t0) / 1e9));
        t0 = process.hrtime.bigint();
        for (let i = 0; i < task.generate; i++) {
            // one token per step, as generation does; the logits of token 0 only, so the timing is the model's
            await sequence.controlledEvaluate([[(i * 31 + 7) % vocab, {generateNext: {logits: {filter: {tokens: [0]}}}}]]);
        }
        tg.push(task.generate / (Number(process.hrtime.bigint() - t0) / 1e9));
    }
    return {pp_tokens_per_s: pp, tg_tokens_per_s: tg};
}

const answers = [];
for (const task of request.tasks) {
    await fresh();
    if (task.op === "meta") {
        const meta = model.fileInfo.metadata;
        answers.push({arch: meta.general?.architecture, n_layer: meta[meta.general?.architecture]?.block_count,
                      chat_template: meta.tokenizer?.chat_template ?? null,
                      bos: model.tokens.bos, eos: model.tokens.eos});
    } else if (task.op === "tokenize") {
        const tokens = model.tokenize(task.text, task.special ?? false);
        answers.push({tokens: Array.from(tokens), text: model.detokenize(tokens, task.special ?? false)});
    } else if (task.op === "logits") {
        answers.push({logits: await lastLogits(task.tokens)});
    } else if (task.op === "greedy") {
        answers.push({tokens: await greedy(task.tokens, task.n)});
    } else if (task.op === "bench") {
        answers.push(await bench(task));
    } else {
        throw new Error(`unknown op ${task.op}`);
    }
}
process.stdout.write(JSON.stringify({answers, llama_cpp: llama.llamaCppRelease}) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
