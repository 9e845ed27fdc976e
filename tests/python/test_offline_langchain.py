"""LangChain's `VLLM` class (langchain_community.llms.VLLM) running on rvllm, unchanged: the
examples of LangChain's vLLM page, with `import vllm` resolved to rvllm."""

import pytest

import rvllm

assert rvllm.install_as_vllm(), "a real vllm is installed: these tests need it absent"

from langchain_community.llms import VLLM  # noqa: E402
from langchain_core.prompts import PromptTemplate  # noqa: E402


@pytest.fixture(scope="module")
def llm():
    # LangChain's documented example (https://python.langchain.com/docs/integrations/llms/vllm/),
    # with rvllm's default model.
    return VLLM(
        model=rvllm.DEFAULT_MODEL,
        trust_remote_code=True,  # mandatory for hf models
        max_new_tokens=128,
        top_k=10,
        top_p=0.95,
        temperature=0.8,
    )


def test_client_is_rvllm(llm):
    assert isinstance(llm.client, rvllm.LLM)


def test_invoke(llm):
    text = llm.invoke("What is the capital of France ?")
    assert isinstance(text, str) and text.strip()


def test_prompt_template_chain(llm):
    template = """Question: {question}

Answer: Let's think step by step."""
    prompt = PromptTemplate.from_template(template)
    chain = prompt | llm
    question = "Who was the US president in the year the first Pokemon game was released?"
    text = chain.invoke({"question": question})
    assert isinstance(text, str) and text.strip()


def test_batch_and_call_options(llm):
    outs = llm.batch(["The capital of France is", "The capital of Italy is"],
                     stop=["\n"], max_tokens=12)
    assert len(outs) == 2
    for text in outs:
        assert isinstance(text, str) and "\n" not in text


def test_greedy_via_langchain_matches_rvllm(llm):
    # Call-time kwargs reach SamplingParams (filtered through its __annotations__).
    a = llm.invoke("The capital of France is", temperature=0.0, max_tokens=8)
    b = llm.client.generate("The capital of France is",
                            rvllm.SamplingParams(temperature=0.0, max_tokens=8, top_k=10,
                                                 top_p=0.95), use_tqdm=False)
    assert a == b[0].outputs[0].text


def test_seed_through_langchain(llm):
    a = llm.invoke("Tell me a joke:", seed=42, max_tokens=12)
    b = llm.invoke("Tell me a joke:", seed=42, max_tokens=12)
    assert a == b


def test_bad_values_surface_as_python_errors(llm):
    with pytest.raises(ValueError, match="temperature"):
        llm.invoke("hi", temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        llm.invoke("hi", top_p=0)


def test_unknown_vllm_kwargs_raise():
    with pytest.raises(Exception, match="bogus_option"):
        VLLM(model=rvllm.DEFAULT_MODEL, vllm_kwargs={"bogus_option": 1})
