"""`reasoner serve` over real HTTP on 127.0.0.1 with the tiny checkpoint: batching, streaming, stop, keys, limits."""
import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import openai
import pytest

from reasoner.serving.backends import LocalBackend
from reasoner.serving.server import ChatServer

KEY = "sekrit"
USER = [{"role": "user", "content": "2+2"}]


def serve(backend, **options):
    server = ChatServer(backend, "127.0.0.1", 0, model_name="tiny", **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def backend(tiny_checkpoint):
    return LocalBackend.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def server(backend):
    server = serve(backend, batch_window=0.2)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def guarded(backend):
    """One request at a time, a key, small bodies: the limits are easy to reach."""
    server = serve(backend, api_key=KEY, limits={"max_concurrent": 1, "max_body_bytes": 4000, "max_n": 4,
                                                   "max_tokens": 1000})
    yield server
    server.shutdown()
    server.server_close()


def connect(server) -> http.client.HTTPConnection:
    url = urlsplit(server.base_url)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=60)


def post(server, body, key=None, raw=None):
    connection = connect(server)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    connection.request("POST", "/v1/chat/completions", raw if raw is not None else json.dumps(body), headers)
    response = connection.getresponse()
    reply = json.loads(response.read())
    connection.close()
    return response.status, reply


def open_stream(server, body, key=None):
    connection = connect(server)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    connection.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}), headers)
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    return connection, response


def events(response):
    """The SSE data fields, parsed, in order; '[DONE]' as is."""
    for line in response:
        line = line.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: "):]
            yield data if data == "[DONE]" else json.loads(data)


def joined(chunks, n):
    texts = [{"content": "", "reasoning_content": ""} for _ in range(n)]
    for chunk in chunks:
        for choice in chunk["choices"]:
            for part in texts[choice["index"]]:
                texts[choice["index"]][part] += choice["delta"].get(part) or ""
    return texts


def test_streamed_chunks_arrive_while_decoding_and_add_up_to_the_whole_completion(server):
    body = {"messages": USER, "n": 2, "max_tokens": 120, "temperature": 0.9, "seed": 3}
    connection, response = open_stream(server, body)
    stream = events(response)
    calls_at_first_text, chunks = None, []
    for event in stream:
        if event == "[DONE]":
            break
        chunks.append(event)
        if calls_at_first_text is None and any(c["delta"].get("content") for c in event["choices"]):
            calls_at_first_text = server.service.batcher.calls
    connection.close()
    assert calls_at_first_text < server.service.batcher.calls  # text came before later model calls were made
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"} and chunks[0]["object"] == "chat.completion.chunk"
    assert sum(1 for c in chunks if any(ch["delta"].get("content") for ch in c["choices"])) >= 4
    finished = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    status, whole = post(server, body)
    assert status == 200 and finished == [c["finish_reason"] for c in whole["choices"]]
    assert joined(chunks, 2) == [{"content": c["message"]["content"], "reasoning_content": ""}
                                 for c in whole["choices"]]


def test_a_stream_gets_each_token_as_it_is_sampled_not_one_segment_at_a_time(server):
    body = {"messages": USER, "max_tokens": 12, "temperature": 0}  # 12 tokens: one 16-token segment, one call
    before = server.service.batcher.calls
    connection, response = open_stream(server, body)
    chunks = [event for event in events(response) if event != "[DONE]"]
    connection.close()
    assert server.service.batcher.calls == before + 1
    pieces = [ch["delta"]["content"] for c in chunks for ch in c["choices"] if ch["delta"].get("content")]
    assert len(pieces) >= 8, pieces  # the character-level tiny model: about one piece per token
    assert "".join(pieces) == post(server, body)[1]["choices"][0]["message"]["content"]


def test_the_openai_client_streams_and_stops_at_a_stop_string(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    whole = client.chat.completions.create(model="tiny", messages=USER, max_tokens=40, temperature=0)
    text = whole.choices[0].message.content
    stop = text[10:13]
    assert len(text) == 40 and stop and text.find(stop) >= 5
    cut = client.chat.completions.create(model="tiny", messages=USER, max_tokens=40, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="tiny", messages=USER, max_tokens=40, temperature=0,
                                              stop=stop, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices]
    assert "".join(pieces) == text[:text.find(stop)]


def test_requests_that_arrive_together_share_model_calls(server):
    solo = post(server, {"messages": USER, "max_tokens": 16, "temperature": 0})[1]["choices"][0]["message"]["content"]
    before, replies = server.service.batcher.calls, []
    threads = [threading.Thread(target=lambda: replies.append(
        post(server, {"messages": USER, "max_tokens": 16, "temperature": 0}))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in replies] == [200] * 8
    assert {reply["choices"][0]["message"]["content"] for _, reply in replies} == {solo}
    assert server.service.batcher.calls - before <= 3  # 8 requests of one 16-token segment each


def test_a_seeded_sampled_reply_does_not_depend_on_what_else_runs(server):
    seeded = {"messages": USER, "max_tokens": 40, "temperature": 1.0, "seed": 11}
    alone = post(server, seeded)[1]["choices"][0]["message"]["content"]
    replies = {}
    others = [{"messages": [{"role": "user", "content": f"{i}*{i}"}], "max_tokens": 40, "temperature": 1.0}
              for i in range(4)]
    threads = [threading.Thread(target=lambda i=i, body=body: replies.__setitem__(i, post(server, body)))
               for i, body in enumerate([seeded] + others)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {status for status, _ in replies.values()} == {200}
    assert replies[0][1]["choices"][0]["message"]["content"] == alone


def served_once_a_slot_is_free(server, seconds: float = 20) -> bool:
    """A small request, retried while the server answers 429; whether it was served in time."""
    deadline = time.monotonic() + seconds
    while (status := post(server, {"messages": USER, "max_tokens": 4}, KEY)[0]) == 429 \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    return status == 200


def test_a_client_that_leaves_mid_stream_frees_its_slot(guarded):
    connection, response = open_stream(guarded, {"messages": USER, "max_tokens": 1000, "temperature": 0}, KEY)
    stream = events(response)
    next(stream), next(stream)  # the role chunk, then text: decoding is under way
    status, reply = post(guarded, {"messages": USER, "max_tokens": 4}, KEY)
    assert status == 429 and "the server is busy: 1 requests in progress, the limit is 1" in reply["error"]["message"]
    calls = guarded.service.batcher.calls
    connection.close()
    assert served_once_a_slot_is_free(guarded)
    assert guarded.service.batcher.calls - calls < 10  # the abandoned 1000 tokens were not decoded (63 segments)


def test_a_client_that_leaves_before_a_whole_reply_frees_its_slot(guarded):
    connection = connect(guarded)
    connection.request("POST", "/v1/chat/completions", json.dumps({"messages": USER, "max_tokens": 1000,
                                                                   "temperature": 0}),
                       {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    time.sleep(0.3)
    calls = guarded.service.batcher.calls
    connection.close()
    assert served_once_a_slot_is_free(guarded)
    assert guarded.service.batcher.calls - calls < 10  # not the 63 segments of 1000 tokens


def test_without_the_key_401(guarded):
    for key in (None, "wrong"):
        status, reply = post(guarded, {"messages": USER}, key)
        assert status == 401 and "API key" in reply["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.base_url, api_key="wrong", max_retries=0).models.list()
    models = openai.OpenAI(base_url=guarded.base_url, api_key=KEY, max_retries=0).models.list()
    assert [m.id for m in models.data] == ["tiny"]


@pytest.mark.parametrize("body, raw, message", [
    (None, b'{"messages": "' + b"x" * 5000 + b'"}', "the body is 5016 bytes; the limit is 4000"),
    ({"messages": USER, "n": 5}, None, "'n' is 5; this server draws at most 4 per request"),
    ({"messages": USER, "max_tokens": 1001}, None, "'max_tokens' is 1001; this server allows at most 1000"),
])
def test_past_a_limit_413_with_a_message(guarded, body, raw, message):
    status, reply = post(guarded, body, KEY, raw)
    assert status == 413 and reply["error"]["message"] == message


@pytest.mark.parametrize("body, status, message", [
    ({"model": "gpt-4", "messages": USER}, 404, "the model 'gpt-4' does not exist; this server has: tiny"),
    ({"messages": USER, "max_tokens": "9"}, 400, "'max_tokens' must be a whole number"),
    ({"messages": USER, "seed": 1.5}, 400, "'seed' must be a whole number"),
    ({"messages": [{"role": "user", "content": 7}]}, 400, "each message needs a role"),
    ({"messages": USER, "temperature": 3}, 400, "'temperature' must be between 0.0 and 2.0"),
])
def test_unknown_models_and_wrong_types_get_a_message(server, body, status, message):
    got, reply = post(server, body)
    assert got == status and message in reply["error"]["message"]


def test_the_openai_client_sees_404_for_an_unknown_model(server):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0).chat.completions.create(
            model="gpt-4", messages=USER)
