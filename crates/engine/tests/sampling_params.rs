use std::collections::HashMap;

use rvllm_engine::sampling_params::{SamplingParams, SamplingParamsError, MAX_LOGPROBS};

fn check(p: SamplingParams) -> Result<(), SamplingParamsError> {
    p.validate()
}

fn bad(p: SamplingParams, field: &str, message: &str) {
    let e = check(p).expect_err(message);
    assert_eq!(e.field(), field, "{e}");
    assert_eq!(e.to_string(), message);
    assert_eq!(e.message(), message);
}

#[test]
fn validation_messages_match_vllm() {
    let d = SamplingParams::default;
    bad(
        SamplingParams {
            temperature: -1.0,
            ..d()
        },
        "temperature",
        "temperature must be non-negative, got -1.",
    );
    bad(
        SamplingParams {
            temperature: f32::NAN,
            ..d()
        },
        "temperature",
        "temperature must be a finite number, got NaN.",
    );
    bad(
        SamplingParams { top_p: 0.0, ..d() },
        "top_p",
        "top_p must be in (0, 1], got 0.",
    );
    bad(
        SamplingParams { top_p: 1.5, ..d() },
        "top_p",
        "top_p must be in (0, 1], got 1.5.",
    );
    bad(
        SamplingParams { top_k: -3, ..d() },
        "top_k",
        "top_k must be 0 (disable), or at least 1, got -3.",
    );
    bad(
        SamplingParams { min_p: 1.5, ..d() },
        "min_p",
        "min_p must be in [0, 1], got 1.5.",
    );
    bad(
        SamplingParams {
            presence_penalty: 2.5,
            ..d()
        },
        "presence_penalty",
        "presence_penalty must be in [-2, 2], got 2.5.",
    );
    bad(
        SamplingParams {
            frequency_penalty: -2.1,
            ..d()
        },
        "frequency_penalty",
        "frequency_penalty must be in [-2, 2], got -2.1.",
    );
    bad(
        SamplingParams {
            repetition_penalty: 0.0,
            ..d()
        },
        "repetition_penalty",
        "repetition_penalty must be greater than zero, got 0.",
    );
    bad(
        SamplingParams {
            repetition_penalty: -2.0,
            ..d()
        },
        "repetition_penalty",
        "repetition_penalty must be greater than zero, got -2.",
    );
    bad(
        SamplingParams {
            max_tokens: Some(0),
            ..d()
        },
        "max_tokens",
        "max_tokens must be at least 1, got 0.",
    );
    bad(
        SamplingParams {
            min_tokens: 20,
            ..d()
        },
        "min_tokens",
        "min_tokens must be less than or equal to max_tokens=16, got 20.",
    );
    bad(
        SamplingParams { n: 0, ..d() },
        "n",
        "n must be at least 1, got 0.",
    );
    bad(
        SamplingParams {
            n: 2,
            temperature: 0.0,
            ..d()
        },
        "n",
        "n must be 1 when using greedy sampling, got 2.",
    );
    bad(
        SamplingParams {
            n: 3,
            best_of: Some(2),
            ..d()
        },
        "best_of",
        "best_of must be greater than or equal to n, got n=3 and best_of=2.",
    );
    bad(
        SamplingParams {
            n: 2,
            best_of: Some(3),
            ..d()
        },
        "best_of",
        "best_of > n is not supported (as in vLLM V1), got n=2 and best_of=3.",
    );
    bad(
        SamplingParams {
            logprobs: Some(21),
            ..d()
        },
        "logprobs",
        "Requested sample logprobs of 21, which is greater than max allowed: 20",
    );
    bad(
        SamplingParams {
            prompt_logprobs: Some(30),
            ..d()
        },
        "prompt_logprobs",
        "Requested prompt logprobs of 30, which is greater than max allowed: 20",
    );
    bad(
        SamplingParams {
            stop: vec!["a".into(), String::new()],
            ..d()
        },
        "stop",
        "stop cannot contain an empty string.",
    );
    bad(
        SamplingParams {
            allowed_token_ids: Some(vec![]),
            ..d()
        },
        "allowed_token_ids",
        "allowed_token_ids is not None and empty!",
    );
}

#[test]
fn valid_edge_values() {
    let d = SamplingParams::default;
    for p in [
        SamplingParams { top_k: -1, ..d() },
        SamplingParams { top_k: 0, ..d() },
        SamplingParams { top_k: 1, ..d() },
        SamplingParams { top_p: 1.0, ..d() },
        SamplingParams { min_p: 1.0, ..d() },
        SamplingParams {
            temperature: 0.0,
            ..d()
        },
        SamplingParams {
            temperature: 5.0,
            ..d()
        },
        SamplingParams {
            max_tokens: None,
            min_tokens: 1000,
            ..d()
        },
        SamplingParams {
            min_tokens: 16,
            ..d()
        },
        SamplingParams {
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            ..d()
        },
        SamplingParams {
            logprobs: Some(MAX_LOGPROBS),
            prompt_logprobs: Some(0),
            ..d()
        },
        SamplingParams {
            n: 4,
            best_of: Some(4),
            ..d()
        },
        SamplingParams {
            n: 1,
            best_of: Some(1),
            ..d()
        },
    ] {
        assert_eq!(check(p.clone()), Ok(()), "{p:?}");
    }
    let p = SamplingParams {
        logprobs: Some(50),
        ..d()
    };
    assert!(p.validate().is_err());
    assert!(p.validate_with_max_logprobs(64).is_ok());
}

#[test]
fn greedy_helpers() {
    assert!(SamplingParams::greedy().is_greedy());
    assert!(SamplingParams {
        temperature: 5e-6,
        ..Default::default()
    }
    .is_greedy());
    assert!(!SamplingParams {
        temperature: 1e-4,
        ..Default::default()
    }
    .is_greedy());
    let p = SamplingParams {
        temperature: 1e-3,
        ..Default::default()
    };
    assert_eq!(p.effective_temperature(), 0.01);
    assert_eq!(SamplingParams::default().effective_temperature(), 1.0);
}

#[test]
fn vocab_validation() {
    let p = SamplingParams {
        logit_bias: Some(HashMap::from([(5, 1.0), (100, 1.0), (7, -1.0)])),
        ..Default::default()
    };
    let e = p.validate_for_vocab(10).unwrap_err();
    assert_eq!(e.field(), "logit_bias");
    assert_eq!(
        e.to_string(),
        "token_id(s) [100] in logit_bias contain out-of-vocab token ids. Vocabulary size: 10"
    );
    assert!(p.validate_for_vocab(101).is_ok());

    let p = SamplingParams {
        allowed_token_ids: Some(vec![1, 10]),
        ..Default::default()
    };
    let e = p.validate_for_vocab(10).unwrap_err();
    assert_eq!(e.field(), "allowed_token_ids");
    assert_eq!(
        e.to_string(),
        "allowed_token_ids contains out-of-vocab token id!"
    );
    let p = SamplingParams {
        stop_token_ids: vec![3, 12],
        ..Default::default()
    };
    assert_eq!(
        p.validate_for_vocab(10).unwrap_err().field(),
        "stop_token_ids"
    );
}

#[test]
fn partial_json_uses_vllm_defaults() {
    let p: SamplingParams = serde_json::from_str("{}").unwrap();
    assert_eq!(p, SamplingParams::default());

    let p: SamplingParams =
        serde_json::from_str(r#"{"temperature": 0.5, "top_k": -1, "stop": "\n"}"#).unwrap();
    assert_eq!(p.temperature, 0.5);
    assert_eq!(p.top_k, -1);
    assert_eq!(p.stop, vec!["\n".to_string()]);
    assert_eq!(p.max_tokens, Some(16));
    assert_eq!(p.top_p, 1.0);
}

#[test]
fn json_nulls_and_special_cases() {
    let p: SamplingParams = serde_json::from_str(
        r#"{"temperature": null, "top_p": null, "n": null, "stop": null,
            "stop_token_ids": null, "seed": null, "logprobs": null}"#,
    )
    .unwrap();
    assert_eq!(p, SamplingParams::default());

    // Explicit null max_tokens = no limit; absent = 16.
    let p: SamplingParams = serde_json::from_str(r#"{"max_tokens": null}"#).unwrap();
    assert_eq!(p.max_tokens, None);
    let p: SamplingParams = serde_json::from_str(r#"{"max_tokens": 100}"#).unwrap();
    assert_eq!(p.max_tokens, Some(100));

    // seed -1 means "no seed"; other negative seeds are accepted.
    let p: SamplingParams = serde_json::from_str(r#"{"seed": -1}"#).unwrap();
    assert_eq!(p.seed, None);
    let p: SamplingParams = serde_json::from_str(r#"{"seed": 42}"#).unwrap();
    assert_eq!(p.seed, Some(42));
    let p: SamplingParams = serde_json::from_str(r#"{"seed": -5}"#).unwrap();
    assert_eq!(p.seed, Some((-5i64) as u64));

    // stop as a list; logit_bias with string keys, clamped to [-100, 100].
    let p: SamplingParams = serde_json::from_str(
        r#"{"stop": ["a", "b"], "logit_bias": {"5": 200, "7": -3.5},
            "allowed_token_ids": [1, 2], "stop_token_ids": [9]}"#,
    )
    .unwrap();
    assert_eq!(p.stop, vec!["a".to_string(), "b".to_string()]);
    assert_eq!(p.logit_bias, Some(HashMap::from([(5, 100.0), (7, -3.5)])));
    assert_eq!(p.allowed_token_ids, Some(vec![1, 2]));
    assert_eq!(p.stop_token_ids, vec![9]);

    // Type errors are still errors.
    assert!(serde_json::from_str::<SamplingParams>(r#"{"n": -1}"#).is_err());
    assert!(serde_json::from_str::<SamplingParams>(r#"{"stop": 3}"#).is_err());
}

#[test]
fn json_roundtrip() {
    let p = SamplingParams {
        n: 3,
        temperature: 0.7,
        top_p: 0.9,
        top_k: 40,
        min_p: 0.05,
        seed: Some(u64::MAX),
        stop: vec!["</s>".into()],
        stop_token_ids: vec![2],
        max_tokens: None,
        min_tokens: 4,
        logprobs: Some(5),
        logit_bias: Some(HashMap::from([(11, -100.0)])),
        allowed_token_ids: Some(vec![1, 2, 3]),
        ..Default::default()
    };
    let json = serde_json::to_string(&p).unwrap();
    let back: SamplingParams = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for key in [
        "n",
        "best_of",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "stop_token_ids",
        "ignore_eos",
        "max_tokens",
        "min_tokens",
        "logprobs",
        "prompt_logprobs",
        "include_stop_str_in_output",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "logit_bias",
        "allowed_token_ids",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}
