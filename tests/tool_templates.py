"""Two tool-calling chat template families, written here for the tests (the layouts, not any model's file).

- ``HERMES``: ChatML with a ``<tools>`` block in the system turn, each call as
  ``<tool_call>{"name", "arguments"}</tool_call>`` inside the assistant turn and the results
  as ``<tool_response>`` blocks in one user turn (the Hermes / Qwen layout);
- ``LLAMA31``: Llama-3.1 headers, the tool schemas as JSON in the first user turn, one call per
  assistant turn as ``{"name", "parameters"}`` closed by ``<|eot_id|>``, results in ``ipython``
  turns; parallel calls raise, as that family's template does.
"""

HERMES = (
    "{%- set ns = namespace(start=0) -%}"
    "{%- if tools or messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] -}}{%- set ns.start = 1 -%}{%- endif -%}"
    "{%- if tools -%}"
    "{{- '\\n\\n# Tools\\n\\nYou may call functions. Their signatures are inside <tools></tools>:\\n<tools>' -}}"
    "{%- for t in tools -%}{{- '\\n' + (t | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\nReturn each call as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.' -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for m in messages[ns.start:] -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' + m['content'] -}}"
    "{%- for c in m['tool_calls'] or [] -%}"
    "{%- if m['content'] or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + c['function']['name'] + '\", \"arguments\": ' -}}"
    "{{- c['function']['arguments'] | tojson -}}{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif m['role'] == 'tool' -%}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' -}}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

LLAMA31 = (
    "{{- '<|begin_of_text|>' -}}"
    "{%- set ns = namespace(start=0, tools_done=false) -%}"
    "{%- if messages[0]['role'] == 'system' -%}{%- set sys = messages[0]['content'] -%}{%- set ns.start = 1 -%}"
    "{%- else -%}{%- set sys = '' -%}{%- endif -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' -}}"
    "{%- if tools -%}{{- 'Environment: ipython\\n\\n' -}}{%- endif -%}"
    "{{- sys + '<|eot_id|>' -}}"
    "{%- for m in messages[ns.start:] -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}"
    "{%- if tools and not ns.tools_done -%}"
    "{{- 'Given the following functions, respond with a JSON for a function call with its proper arguments that '"
    " + 'best answers the given prompt.\\n\\nRespond in the format {\"name\": function name, \"parameters\": '"
    " + 'dictionary of argument name and its value}.\\n\\n' -}}"
    "{%- for t in tools -%}{{- (t | tojson(indent=4)) + '\\n\\n' -}}{%- endfor -%}"
    "{%- set ns.tools_done = true -%}"
    "{%- endif -%}"
    "{{- m['content'] + '<|eot_id|>' -}}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- if m['tool_calls'] -%}"
    "{%- if m['tool_calls'] | length > 1 -%}{{- raise_exception('only one tool call per turn') -}}{%- endif -%}"
    "{%- set c = m['tool_calls'][0]['function'] -%}"
    "{{- '{\"name\": \"' + c['name'] + '\", \"parameters\": ' + (c['arguments'] | tojson) + '}<|eot_id|>' -}}"
    "{%- else -%}{{- m['content'] + '<|eot_id|>' -}}{%- endif -%}"
    "{%- elif m['role'] == 'tool' -%}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

FAMILIES = {"hermes": HERMES, "llama31": LLAMA31}
