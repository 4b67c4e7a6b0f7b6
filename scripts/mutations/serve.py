"""Serving hardening (issue 20): one bad request hurts only itself, valid JSON never answers 500, memory is
budgeted before decoding or tokenizing, user text never becomes control tokens, browser-facing guards."""
from mutations import Mutation

ISOLATION = "tests/serve/test_row_isolation.py"
VALID_JSON = "tests/serve/test_valid_json.py"
MEMORY = "tests/serve/test_memory_budget.py"
CONTROL = "tests/serve/test_control_tokens.py"
GUARDS = "tests/serve/test_browser_guards.py"

MUTATIONS = [
    Mutation(name="serve: a row's sampling error fails the whole decode step", file="ocellus/infer/batching.py",
             old="""            except Exception as e:  # this row's request fails; the other rows decode on
                failed[s.req] = failure_of(e)
                continue""",
             new="""            except Exception as e:  # this row's request fails; the other rows decode on
                raise""",
             tests=[f"{ISOLATION}::test_nan_logits_end_only_their_row"]),
    Mutation(name="serve: non-finite logits of plain-greedy rows not checked", file="ocellus/infer/batching.py",
             old="                if not finite[i]:\n", new="                if False:\n",
             tests=[f"{ISOLATION}::test_nan_logits_end_only_their_row"]),
    Mutation(name="serve: tiny temperatures sampled (1/T overflows)", file="ocellus/infer/engine_request.py",
             old="return self.temperature < SAMPLING_EPS", new="return self.temperature <= 0",
             tests=[f"{ISOLATION}::test_nan_logits_end_only_their_row"]),
    Mutation(name="serve: seed not bounded to int64", file="ocellus/serve/openai_schema.py",
             old='seed=int_field(body, "seed", *INT64)', new='seed=int_field(body, "seed")',
             tests=[ISOLATION]),
    Mutation(name="serve: RecursionError of deep JSON escapes as a 500", file="ocellus/serve/json_body.py",
             old="    except RecursionError:", new="    except ZeroDivisionError:", tests=[VALID_JSON]),
    Mutation(name="serve: huge JSON integers converted (ValueError, 500)", file="ocellus/serve/json_body.py",
             old="json.loads(body, parse_int=_int, parse_constant=_constant)",
             new="json.loads(body, parse_constant=_constant)", tests=[VALID_JSON]),
    Mutation(name="serve: lone surrogates in strings let through", file="ocellus/serve/json_body.py",
             old="        if isinstance(v, str) and _SURROGATE.search(v):", new="        if False:",
             tests=[VALID_JSON]),
    Mutation(name="serve: explain's refused image escapes the handler", file="ocellus/serve/app.py",
             old="""    except (InputError, ConfigError) as e:   # every refused image is a 400 naming the field""",
             new="""    except ZeroDivisionError as e:   # every refused image is a 400 naming the field""",
             tests=[VALID_JSON]),
    Mutation(name="serve: request pixel budget counts only the last image", file="ocellus/serve/media.py",
             old="        total += _header_pixels(src, where, limits)",
             new="        total = _header_pixels(src, where, limits)",
             tests=[f"{MEMORY}::test_pixel_budget_is_decided_on_headers_before_decoding"]),
    Mutation(name="serve: prompt byte cap a million times too large", file="ocellus/serve/app.py",
             old="self.max_prompt_bytes = limits.prompt_bytes_per_token * self.engine.max_len",
             new="self.max_prompt_bytes = limits.prompt_bytes_per_token * self.engine.max_len * 10**6",
             tests=[f"{MEMORY}::test_long_prompt_refused_before_tokenizing"]),
    Mutation(name="serve: preprocessing concurrency unbounded", file="ocellus/serve/app.py",
             old="asyncio.Semaphore(limits.preprocess_concurrency)", new="asyncio.Semaphore(64)",
             tests=[f"{MEMORY}::test_preprocessing_runs_for_a_bounded_number_of_requests"]),
    Mutation(name="serve: processor parses control tokens in message text", file="ocellus/data/processor.py",
             old="literal=_shift(spans[b], marks))", new="literal=[])",
             tests=[f"{CONTROL}::test_processor_keeps_message_text_plain"]),
    Mutation(name="serve: training segments of message text not marked literal", file="ocellus/data/templates.py",
             old='else Segment(p["text"], trainable, turn, literal=((0, len(p["text"])),))',
             new='else Segment(p["text"], trainable, turn)', tests=[CONTROL]),
    Mutation(name="serve: merged segments keep unshifted literal spans", file="ocellus/data/encode.py",
             old="shifted = tuple((a + len(last.text), b + len(last.text)) for a, b in s.literal)",
             new="shifted = s.literal", tests=[CONTROL]),
    Mutation(name="serve: a template that changes text lets control strings through",
             file="ocellus/data/control_tokens.py", old="            if found:\n", new="            if False:\n",
             tests=[f"{CONTROL}::test_templates_that_change_text"]),
    Mutation(name="serve: text/plain POSTs served (CSRF)", file="ocellus/serve/guards.py",
             old='            if kind != "application/json":', new='            if kind == "text/html":',
             tests=[f"{GUARDS}::test_post_must_be_json"]),
    Mutation(name="serve: any Host served (DNS rebinding)", file="ocellus/serve/guards.py",
             old="        return name == self.bind or (self.bind in WILDCARD_BINDS and _is_ip(name))",
             new="        return name == self.bind or self.bind in WILDCARD_BINDS or True",
             tests=[f"{GUARDS}::test_foreign_host_is_refused"]),
    Mutation(name="serve: Origin compared by host name only (other ports pass)", file="ocellus/serve/guards.py",
             old='if not netloc or (netloc != (host or "").lower() and _hostname(netloc) not in self.allowed):',
             new='if not netloc or (_hostname(netloc) != _hostname(host or "") and netloc not in self.allowed):',
             tests=[f"{GUARDS}::test_foreign_origin_is_refused"]),
    Mutation(name="serve: page served without its CSP", file="ocellus/serve/app.py",
             old='    return HTMLResponse(html, headers={"Content-Security-Policy": page_csp(html)})',
             new="    return HTMLResponse(html)", tests=[f"{GUARDS}::test_page_security_headers"]),
    Mutation(name="serve: the request-head deadline dropped at the first byte (slowloris)",
             file="ocellus/serve/guards.py",
             old=("        if self.conn.their_state is not h11.IDLE and self._head_deadline is not None:"
                  "  # the head is in"),
             new="        if self._head_deadline is not None:  # the head is in",
             tests=[f"{GUARDS}::test_idle_and_slow_connections_are_closed"]),
]
