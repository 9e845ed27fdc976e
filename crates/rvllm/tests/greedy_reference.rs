//! The forward pass against llama.cpp: greedy 64-token continuations of the default model must
//! equal llama.cpp's (tests/reference/greedy_continuations.json, made by
//! scripts/make_greedy_reference.py). A divergence is accepted only at a step where llama.cpp's
//! top-2 logits were within quantization noise (after that the texts legitimately differ), and

mod common;
use rvllm::SamplingParams;

#[test]
fn greedy_continuations_match_llama_cpp() {
    let mut llm = common::llm(|_| {});
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/reference/greedy_continuations.json"
    );
    let check =
        rvllm::devcheck::check_reference(&mut llm, std::path::Path::new(path)).expect("check");
    eprintln!("{}", check.report);
    assert!(check.cases >= 20);
    assert_eq!(
        check.diverged, 0,
        "a continuation left llama.cpp's at a clear choice:\n{}",
        check.report
    );
    assert!(
        check.forced_clear_steps > 1000,
        "too few clear steps to mean anything"
    );
    assert_eq!(
        check.forced_clear_agree, check.forced_clear_steps,
        "{}",
        check.report
    );
}

#[test]
fn prompt_tokenization_matches_llama_cpp() {
    let reference = common::reference();
    let llm = common::llm(|_| {});
    let tok = llm.tokenizer().expect("tokenizer");
    for case in reference["cases"].as_array().expect("cases") {
        let text = case["prompt"].as_str().expect("prompt");
        assert_eq!(
            tok.encode(text, true).expect("encode"),
            common::ids(&case["prompt_ids"]),
            "{text:?}"
        );
    }
}

#[test]
fn capital_of_france_is_paris() {
    let mut llm = common::llm(|_| {});
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: Some(32),
        ..Default::default()
    };
    let outs = llm
        .chat(
            &[vec![rvllm::ChatMessage {
                role: "user".into(),
                content: "What is the capital of France?".into(),
            }]],
            &params,
        )
        .expect("chat");
    let text = &outs[0].outputs[0].text;
    assert!(text.contains("Paris"), "{text:?}");
}

#[test]
fn model_load_stays_under_1_gib_rss() {
    let _llm = common::llm(|_| {});
    let status = std::fs::read_to_string("/proc/self/status").expect("proc");
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    assert!(kb < 1 << 20, "RSS after load: {} MiB", kb >> 10);
}
