//! vLLM's engine flags that only change set-up: `--chat-template` and `--tensor-parallel-size`.

mod common;

use rvllm::llm::resolve_chat_template;
use rvllm::{ChatMessage, EngineArgs, LLM};

#[test]
fn chat_template_from_a_file_or_inline_and_mistakes_are_errors() {
    let inline = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}";
    assert_eq!(resolve_chat_template(inline).expect("inline"), inline);
    let dir = std::env::temp_dir().join(format!("rvllm-chat-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("t.jinja");
    std::fs::write(&file, inline).expect("write");
    let from_file = resolve_chat_template(file.to_str().expect("utf-8 path")).expect("file");
    assert_eq!(from_file, inline);
    let missing = dir.join("missing.jinja");
    let err = resolve_chat_template(missing.to_str().expect("utf-8 path"))
        .expect_err("a missing file is an error")
        .to_string();
    assert!(err.contains("no such file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_chat_template_replaces_the_models_own() {
    let msgs = [ChatMessage {
        role: "user".into(),
        content: "hello".into(),
    }];
    let own = common::llm(|_| {}).render_chat(&msgs).expect("render");
    assert!(own.contains("<|im_start|>user"), "SmolLM2's ChatML: {own}");
    let custom = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>";
    let llm = common::llm(|a| a.chat_template = Some(custom.into()));
    assert_eq!(
        llm.render_chat(&msgs).expect("render"),
        "<user>hello<assistant>"
    );
}

#[test]
fn tensor_parallel_above_one_is_refused_before_loading() {
    let err = LLM::new(EngineArgs {
        tensor_parallel_size: 2,
        // Never opened: the check comes first.
        model: Some("no-such-model.gguf".into()),
        ..Default::default()
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("tensor_parallel_size 2"), "{err}");
}

#[test]
fn num_gpu_blocks_override_sizes_the_cache_and_a_small_one_preempts_without_changing_outputs() {
    let prompts: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "Request {i}: write a short story about the number {}.",
                i * 7
            )
        })
        .collect();
    let params = rvllm::SamplingParams {
        temperature: 0.0,
        max_tokens: Some(48),
        ignore_eos: true,
        ..Default::default()
    };
    let texts = |llm: &mut LLM| -> Vec<Vec<u32>> {
        llm.generate(&prompts, &params)
            .expect("generate")
            .into_iter()
            .map(|o| o.outputs[0].token_ids.clone())
            .collect()
    };
    let want = texts(&mut common::llm(|_| {}));
    // 16 blocks of 16 tokens: room for about three of the eight ~70-token sequences at once.
    let mut small = common::llm(|a| {
        a.num_gpu_blocks_override = Some(16);
        a.max_model_len = Some(256);
    });
    assert_eq!(small.engine().config().num_gpu_blocks, 16);
    assert_eq!(texts(&mut small), want);
    assert!(
        small.engine().scheduler.num_preemptions > 0,
        "16 blocks for 8 sequences of ~70 tokens must preempt"
    );
    // Fewer blocks than one max_model_len sequence needs: refused at start, as vLLM does.
    let err = LLM::new(EngineArgs {
        model: Some(common::model_path()),
        num_gpu_blocks_override: Some(4),
        max_model_len: Some(256),
        ..Default::default()
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("max_model_len 256"), "{err}");
}

#[test]
fn async_scheduling_gives_the_same_greedy_outputs() {
    // On the CPU greedy steps take the in-flight path too (nothing overlaps there): the
    // engine's pending inputs and the runner's patch and deferred id copies, with a real model.
    let prompts: Vec<String> = (0..4).map(|i| format!("Fact number {i}:")).collect();
    let params = rvllm::SamplingParams {
        temperature: 0.0,
        max_tokens: Some(24),
        ..Default::default()
    };
    let run = |async_scheduling: bool| -> Vec<(Vec<u32>, String)> {
        common::llm(|a| a.async_scheduling = async_scheduling)
            .generate(&prompts, &params)
            .expect("generate")
            .into_iter()
            .map(|o| (o.outputs[0].token_ids.clone(), o.outputs[0].text.clone()))
            .collect()
    };
    assert_eq!(run(true), run(false));
}
