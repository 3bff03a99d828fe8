"""Drives a prima server with the official `openai` client: models, chat (plain and streamed),
completions with a stop string. Usage: openai_check.py BASE_URL [API_KEY]. Exits non-zero on
any mismatch."""
import sys

from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=base, api_key=sys.argv[2] if len(sys.argv) > 2 else "none")

models = client.models.list()
ids = [m.id for m in models.data]
assert ids, "no models listed"
model = ids[0]

messages = [{"role": "user", "content": "Name three colours."}]
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0, seed=7)
text = chat.choices[0].message.content
assert chat.object == "chat.completion", chat
assert chat.choices[0].message.role == "assistant"
assert text, "empty reply"
assert chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 0, chat.usage
assert chat.choices[0].finish_reason in ("stop", "length")

parts = []
finish = None
for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0, seed=7, stream=True):
    assert chunk.object == "chat.completion.chunk", chunk
    delta = chunk.choices[0].delta
    if delta.content:
        parts.append(delta.content)
    if chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
assert "".join(parts) == text, ("".join(parts), text)
assert finish == chat.choices[0].finish_reason, (finish, chat.choices[0].finish_reason)

comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=24, temperature=0, stop=["."])
assert comp.object == "text_completion", comp
assert comp.choices[0].finish_reason == "stop", comp
assert "." not in comp.choices[0].text and comp.choices[0].text.strip(), comp.choices[0].text

streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(model=model, prompt="The capital of France is", max_tokens=24, temperature=0, stop=["."], stream=True)
)
assert streamed == comp.choices[0].text, (streamed, comp.choices[0].text)
print("openai client: ok:", repr(text))
