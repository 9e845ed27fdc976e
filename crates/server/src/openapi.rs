//! GET /openapi.json: a hand-written OpenAPI 3 description of the endpoints.

pub const OPENAPI_JSON: &str = r##"{
  "openapi": "3.0.3",
  "info": {
    "title": "rvllm OpenAI-compatible server",
    "description": "vLLM-compatible endpoints: OpenAI completions and chat completions (streaming as server-sent events), models, tokenize/detokenize, health, version and Prometheus metrics. With --api-key, /v1/* needs `Authorization: Bearer <key>`.",
    "version": "0.1.0"
  },
  "paths": {
    "/v1/completions": {
      "post": {
        "summary": "Create a completion",
        "description": "prompt: a string, a list of strings, a list of token ids or a list of token-id lists. Choices of prompt i are choices[i*n:(i+1)*n]. Sampling fields as vLLM: n, max_tokens (default 16, null = rest of the context), temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty, repetition_penalty, seed, stop, stop_token_ids, ignore_eos, min_tokens, logit_bias, logprobs (0-20), echo, skip_special_tokens, include_stop_str_in_output, stream, stream_options.include_usage, user.",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CompletionRequest"}}}},
        "responses": {
          "200": {"description": "A completion (application/json), or with stream=true a text/event-stream of `data: <chunk>` events ending with `data: [DONE]`.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CompletionResponse"}}, "text/event-stream": {"schema": {"type": "string"}}}},
          "400": {"$ref": "#/components/responses/Error"},
          "401": {"$ref": "#/components/responses/Error"},
          "404": {"$ref": "#/components/responses/Error"}
        }
      }
    },
    "/v1/chat/completions": {
      "post": {
        "summary": "Create a chat completion",
        "description": "messages (system/user/assistant; content a string or a list of {type: text} parts) rendered with the model's chat template. max_completion_tokens or max_tokens (default: rest of the context), logprobs + top_logprobs, and the sampling fields of /v1/completions.",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}},
        "responses": {
          "200": {"description": "A chat completion, or with stream=true a text/event-stream of chat.completion.chunk events (the first carries the assistant role) ending with `data: [DONE]`.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionResponse"}}, "text/event-stream": {"schema": {"type": "string"}}}},
          "400": {"$ref": "#/components/responses/Error"},
          "401": {"$ref": "#/components/responses/Error"},
          "404": {"$ref": "#/components/responses/Error"}
        }
      }
    },
    "/v1/models": {
      "get": {
        "summary": "List the served model",
        "responses": {"200": {"description": "The model list", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelList"}}}}, "401": {"$ref": "#/components/responses/Error"}}
      }
    },
    "/tokenize": {
      "post": {
        "summary": "Tokenize a prompt, or chat messages with the chat template",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"model": {"type": "string"}, "prompt": {"type": "string"}, "messages": {"type": "array", "items": {"$ref": "#/components/schemas/ChatMessage"}}, "add_special_tokens": {"type": "boolean"}, "add_generation_prompt": {"type": "boolean"}, "continue_final_message": {"type": "boolean"}, "return_token_strs": {"type": "boolean"}}}}}},
        "responses": {"200": {"description": "Token ids", "content": {"application/json": {"schema": {"type": "object", "properties": {"count": {"type": "integer"}, "max_model_len": {"type": "integer"}, "tokens": {"type": "array", "items": {"type": "integer"}}, "token_strs": {"type": "array", "nullable": true, "items": {"type": "string"}}}}}}}, "400": {"$ref": "#/components/responses/Error"}}
      }
    },
    "/detokenize": {
      "post": {
        "summary": "Turn token ids back into text",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["tokens"], "properties": {"model": {"type": "string"}, "tokens": {"type": "array", "items": {"type": "integer"}}}}}}},
        "responses": {"200": {"description": "The text", "content": {"application/json": {"schema": {"type": "object", "properties": {"prompt": {"type": "string"}}}}}}, "400": {"$ref": "#/components/responses/Error"}}
      }
    },
    "/health": {"get": {"summary": "200 while the engine runs, 503 once it died", "responses": {"200": {"description": "Healthy"}, "503": {"description": "The engine is not running"}}}},
    "/ping": {"get": {"summary": "Same as /health", "responses": {"200": {"description": "Healthy"}}}},
    "/version": {"get": {"summary": "Server version", "responses": {"200": {"description": "The version", "content": {"application/json": {"schema": {"type": "object", "properties": {"version": {"type": "string"}}}}}}}}},
    "/metrics": {"get": {"summary": "Prometheus metrics (rvllm:num_requests_running, rvllm:kv_cache_usage_perc, rvllm:time_to_first_token_seconds, ...)", "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3 document"}}}}
  },
  "components": {
    "responses": {
      "Error": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    },
    "schemas": {
      "ErrorResponse": {
        "type": "object",
        "properties": {"error": {"type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string", "example": "BadRequestError"}, "param": {"type": "string", "nullable": true}, "code": {"type": "integer", "example": 400}}}}
      },
      "StopField": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
      "SamplingFields": {
        "type": "object",
        "properties": {
          "n": {"type": "integer", "minimum": 1, "default": 1},
          "temperature": {"type": "number", "minimum": 0, "default": 1},
          "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1},
          "top_k": {"type": "integer", "default": 0},
          "min_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
          "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2, "default": 0},
          "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2, "default": 0},
          "repetition_penalty": {"type": "number", "exclusiveMinimum": 0, "default": 1},
          "seed": {"type": "integer", "nullable": true},
          "stop": {"$ref": "#/components/schemas/StopField"},
          "stop_token_ids": {"type": "array", "items": {"type": "integer"}},
          "ignore_eos": {"type": "boolean", "default": false},
          "min_tokens": {"type": "integer", "minimum": 0, "default": 0},
          "logit_bias": {"type": "object", "nullable": true, "additionalProperties": {"type": "number"}},
          "skip_special_tokens": {"type": "boolean", "default": true},
          "include_stop_str_in_output": {"type": "boolean", "default": false},
          "stream": {"type": "boolean", "default": false},
          "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}, "continuous_usage_stats": {"type": "boolean"}}},
          "user": {"type": "string"},
          "priority": {"type": "integer", "default": 0}
        }
      },
      "CompletionRequest": {
        "allOf": [{"$ref": "#/components/schemas/SamplingFields"}, {
          "type": "object",
          "required": ["prompt"],
          "properties": {
            "model": {"type": "string"},
            "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "array", "items": {"type": "integer"}}, {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]},
            "max_tokens": {"type": "integer", "nullable": true, "default": 16},
            "echo": {"type": "boolean", "default": false},
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 20, "nullable": true},
            "add_special_tokens": {"type": "boolean", "default": true}
          }
        }]
      },
      "ChatMessage": {
        "type": "object",
        "required": ["role"],
        "properties": {
          "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
          "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object", "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}}], "nullable": true},
          "name": {"type": "string"}
        }
      },
      "ChatCompletionRequest": {
        "allOf": [{"$ref": "#/components/schemas/SamplingFields"}, {
          "type": "object",
          "required": ["messages"],
          "properties": {
            "model": {"type": "string"},
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/ChatMessage"}},
            "max_tokens": {"type": "integer", "nullable": true},
            "max_completion_tokens": {"type": "integer", "nullable": true},
            "logprobs": {"type": "boolean", "default": false},
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20, "nullable": true},
            "add_generation_prompt": {"type": "boolean", "default": true},
            "continue_final_message": {"type": "boolean", "default": false},
            "add_special_tokens": {"type": "boolean", "default": false}
          }
        }]
      },
      "Usage": {
        "type": "object",
        "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}
      },
      "CompletionResponse": {
        "type": "object",
        "properties": {
          "id": {"type": "string"}, "object": {"type": "string", "example": "text_completion"}, "created": {"type": "integer"}, "model": {"type": "string"},
          "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "text": {"type": "string"},
            "logprobs": {"type": "object", "nullable": true, "properties": {"tokens": {"type": "array", "items": {"type": "string"}}, "token_logprobs": {"type": "array", "items": {"type": "number"}}, "top_logprobs": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "number"}}}, "text_offset": {"type": "array", "items": {"type": "integer"}}}},
            "finish_reason": {"type": "string", "nullable": true, "enum": ["stop", "length", "abort"]},
            "stop_reason": {"nullable": true, "oneOf": [{"type": "string"}, {"type": "integer"}]}
          }}},
          "usage": {"$ref": "#/components/schemas/Usage"}
        }
      },
      "ChatCompletionResponse": {
        "type": "object",
        "properties": {
          "id": {"type": "string"}, "object": {"type": "string", "example": "chat.completion"}, "created": {"type": "integer"}, "model": {"type": "string"},
          "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"},
            "message": {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}}},
            "logprobs": {"type": "object", "nullable": true, "properties": {"content": {"type": "array", "items": {"type": "object", "properties": {"token": {"type": "string"}, "logprob": {"type": "number"}, "bytes": {"type": "array", "items": {"type": "integer"}}, "top_logprobs": {"type": "array", "items": {"type": "object"}}}}}}},
            "finish_reason": {"type": "string", "nullable": true},
            "stop_reason": {"nullable": true, "oneOf": [{"type": "string"}, {"type": "integer"}]}
          }}},
          "usage": {"$ref": "#/components/schemas/Usage"}
        }
      },
      "ModelList": {
        "type": "object",
        "properties": {"object": {"type": "string", "example": "list"}, "data": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"}, "owned_by": {"type": "string"}, "root": {"type": "string"}, "max_model_len": {"type": "integer"}}}}}
      }
    }
  }
}
"##;

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_is_valid_json_listing_every_route() {
        let v: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).expect("valid JSON");
        let paths = v["paths"].as_object().expect("paths");
        for p in [
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/models",
            "/tokenize",
            "/detokenize",
            "/health",
            "/version",
            "/metrics",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
    }
}
