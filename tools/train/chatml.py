"""The chat template of models/warmkv-chat (Jinja, ChatML with Qwen2.5-style tools) and a Python renderer
that produces the same text, split into segments that say which characters the training loss covers
(the assistant replies and their <|im_end|>). check_chat_template.mjs renders the same dialogues with
@huggingface/jinja and requires identical text."""
import json

TOOLS_PREAMBLE = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                  "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_POSTAMBLE = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                   "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                   "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")
DEFAULT_SYSTEM = "You are a helpful assistant."


def _lit(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}{%- else %}{{- " + _lit(DEFAULT_SYSTEM) + " }}{%- endif %}"
    "{{- " + _lit(TOOLS_PREAMBLE) + " }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- " + _lit(TOOLS_POSTAMBLE + "<|im_end|>\n") + " }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tools_system_text(system, tools):
    """The system turn's content when tools are listed (what the template writes after <|im_start|>system\\n)."""
    out = (system if system is not None else DEFAULT_SYSTEM) + TOOLS_PREAMBLE
    for t in tools:
        out += "\n" + json.dumps(t, ensure_ascii=False)
    return out + TOOLS_POSTAMBLE


def render_segments(messages, tools=None, add_generation_prompt=False):
    """[(text, trained)]: trained is True for assistant reply text and its <|im_end|>."""
    segs = []
    if tools:
        sys_text = messages[0]["content"] if messages[0]["role"] == "system" else None
        segs.append(("<|im_start|>system\n" + tools_system_text(sys_text, tools) + "<|im_end|>\n", False))
    elif messages[0]["role"] == "system":
        segs.append(("<|im_start|>system\n" + messages[0]["content"] + "<|im_end|>\n", False))
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "user" or (role == "system" and i > 0) or (role == "assistant" and not m.get("tool_calls")):
            if role == "assistant":
                segs.append(("<|im_start|>assistant\n", False))
                segs.append((m["content"] + "<|im_end|>", True))
                segs.append(("\n", False))
            else:
                segs.append(("<|im_start|>" + role + "\n" + m["content"] + "<|im_end|>\n", False))
        elif role == "assistant":
            segs.append(("<|im_start|>assistant\n", False))
            body = m["content"] if m.get("content") else ""
            parts = []
            for tc in m["tool_calls"]:
                f = tc.get("function", tc)
                args = f["arguments"] if isinstance(f["arguments"], str) else json.dumps(f["arguments"],
                                                                                         ensure_ascii=False)
                parts.append("<tool_call>\n{\"name\": \"" + f["name"] + "\", \"arguments\": " + args + "}\n</tool_call>")
            # the template writes "\n" before each call; with no content the first "\n" is the prompt's
            text = (body + "\n" if body else "") + "\n".join(parts)
            segs.append((text + "<|im_end|>", True))
            segs.append(("\n", False))
        elif role == "tool":
            head = "<|im_start|>user" if i == 0 or messages[i - 1]["role"] != "tool" else ""
            tail = "<|im_end|>\n" if i == len(messages) - 1 or messages[i + 1]["role"] != "tool" else ""
            segs.append((head + "\n<tool_response>\n" + m["content"] + "\n</tool_response>" + tail, False))
    if add_generation_prompt:
        segs.append(("<|im_start|>assistant\n", False))
    return segs


def render(messages, tools=None, add_generation_prompt=False):
    return "".join(t for t, _ in render_segments(messages, tools, add_generation_prompt))
