//! Chat templates: renders a conversation into the prompt text a model was trained on, from the
//! Jinja template in the GGUF file (`tokenizer.chat_template`), as Hugging Face's
//! `apply_chat_template` and llama.cpp do.
//!
//! Templates run in minijinja with Jinja2's settings for chat templates (`trim_blocks`,
//! `lstrip_blocks`), Python string methods (`.strip()`, `.split()`, ...) from minijinja-contrib,
//! and the helpers templates call: `raise_exception(msg)` and `strftime_now(format)`.
//! Without a template the conversation is rendered as ChatML, llama.cpp's fallback.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{Environment, ErrorKind, Value};

use crate::error::{Error, Result};
use crate::value::Metadata;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user", "assistant" (or "tool", "ipython" where a template knows them).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A model's chat format: its template (ChatML when it has none) and the BOS/EOS token texts
/// templates may print.
#[derive(Clone, Debug)]
pub struct ChatFormat {
    template: Option<String>,
    bos: String,
    eos: String,
}

impl ChatFormat {
    pub fn new(template: Option<String>, tok: &crate::Tokenizer) -> ChatFormat {
        let text_of = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        ChatFormat { template, bos: text_of(tok.bos()), eos: text_of(tok.eos()) }
    }

    /// [`render_chat`] with this format.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        render_chat(self.template.as_deref(), messages, add_generation_prompt, &self.bos, &self.eos)
    }
}

/// The chat template stored in a GGUF file, if any.
pub fn template_from_metadata(md: &Metadata) -> Result<Option<&str>> {
    md.str_opt("tokenizer.chat_template")
}

/// Renders `messages` with `template` (ChatML when `None`). `add_generation_prompt` appends the
/// opening of the assistant's turn. `bos_token`/`eos_token` are the token texts templates may
/// print (for example `<|begin_of_text|>`); whether BOS is then also added at tokenization is
/// the caller's business, as in llama.cpp.
pub fn render_chat(
    template: Option<&str>,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let Some(template) = template else {
        return Ok(render_chatml(messages, add_generation_prompt));
    };
    let env = environment();
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut map = BTreeMap::new();
            map.insert("role", Value::from(m.role.as_str()));
            map.insert("content", Value::from(m.content.as_str()));
            Value::from(map)
        })
        .collect();
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    env.render_str(template, ctx).map_err(|e| {
        let mut msg = e.to_string();
        if let Some(detail) = e.detail() {
            if !msg.contains(detail) {
                msg = format!("{msg}: {detail}");
            }
        }
        Error::Template(msg)
    })
}

/// `<|im_start|>role\ncontent<|im_end|>\n` per message, as llama.cpp's "chatml" template.
fn render_chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Hugging Face renders chat templates with these two Jinja2 options on.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |format: String| -> String {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        strftime_utc(&format, secs)
    });
    env
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm): (year, month 1-12, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Python's `strftime` for the common directives, in UTC; unknown directives stay as written.
fn strftime_utc(format: &str, unix_secs: u64) -> String {
    let secs = i64::try_from(unix_secs).unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (rem / 3600, rem / 60 % 60, rem % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let month_name = MONTHS.get(month as usize - 1).copied().unwrap_or("");
    let weekday_name = WEEKDAYS.get(weekday).copied().unwrap_or("");
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') => out.push_str(month_name.get(..3).unwrap_or("")),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(weekday_name.get(..3).unwrap_or("")),
            Some('A') => out.push_str(weekday_name),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(list: &[(&str, &str)]) -> Vec<ChatMessage> {
        list.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
    }

    /// system + user + assistant + user, the conversation every template test renders.
    fn conversation() -> Vec<ChatMessage> {
        msgs(&[
            ("system", "You are a helpful assistant."),
            ("user", "Hello!"),
            ("assistant", "Hi there! How can I help?"),
            ("user", "What is 2+2?"),
        ])
    }

    fn render_fixture(template: &str, bos: &str, eos: &str) -> String {
        match render_chat(Some(template), &conversation(), true, bos, eos) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn smollm2_template() {
        // Goal: SmolLM2's own template (copied from the model file); method: the 4-turn chat.
        let t = include_str!("../tests/templates/smollm2.jinja");
        assert_eq!(
            render_fixture(t, "<|im_start|>", "<|im_end|>"),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHello!<|im_end|>\n\
             <|im_start|>assistant\nHi there! How can I help?<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // Without a system message the template supplies SmolLM's own.
        let m = msgs(&[("user", "Hi")]);
        assert_eq!(
            render_chat(Some(t), &m, false, "", "").ok().as_deref(),
            Some(
                "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                 <|im_start|>user\nHi<|im_end|>\n"
            )
        );
    }

    #[test]
    fn qwen25_template() {
        // Goal: Qwen2.5-Instruct's template; method: the 4-turn chat, then no system message.
        let t = include_str!("../tests/templates/qwen2.5-instruct.jinja");
        assert_eq!(
            render_fixture(t, "", "<|im_end|>"),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHello!<|im_end|>\n\
             <|im_start|>assistant\nHi there! How can I help?<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let m = msgs(&[("user", "Hi")]);
        assert_eq!(
            render_chat(Some(t), &m, true, "", "").ok().as_deref(),
            Some(
                "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
                 <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            )
        );
    }

    #[test]
    fn deepseek_r1_distill_qwen_templates() {
        // Goal: DeepSeek-R1-Distill-Qwen's templates (7B GGUF's and the current HF one);
        // method: the 4-turn chat, and an assistant turn whose reasoning must be dropped.
        let bos = "<｜begin▁of▁sentence｜>";
        let eos = "<｜end▁of▁sentence｜>";
        let body = "<｜begin▁of▁sentence｜>You are a helpful assistant.\
                    <｜User｜>Hello!<｜Assistant｜>Hi there! How can I help?<｜end▁of▁sentence｜>\
                    <｜User｜>What is 2+2?<｜Assistant｜>";
        let t7 = include_str!("../tests/templates/deepseek-r1-distill-qwen-7b.jinja");
        assert_eq!(render_fixture(t7, bos, eos), body);
        let t32 = include_str!("../tests/templates/deepseek-r1-distill-qwen-32b.jinja");
        assert_eq!(render_fixture(t32, bos, eos), format!("{body}<think>\n"));
        let m = msgs(&[("user", "Q"), ("assistant", "<think>\nhmm\n</think>\n\nA")]);
        assert_eq!(
            render_chat(Some(t7), &m, false, bos, eos).ok().as_deref(),
            Some("<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜>\n\nA<｜end▁of▁sentence｜>")
        );
    }

    #[test]
    fn llama3_template() {
        // Goal: Llama 3 Instruct's template; method: the 4-turn chat.
        let t = include_str!("../tests/templates/llama-3-instruct.jinja");
        assert_eq!(
            render_fixture(t, "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn llama31_and_32_templates() {
        // Goal: Llama 3.1/3.2 Instruct's templates (system block with dates); method: the
        // 4-turn chat; 3.2 takes today's date from strftime_now.
        let tail = "You are a helpful assistant.<|eot_id|>\
                    <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>\
                    <|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>\
                    <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
                    <|start_header_id|>assistant<|end_header_id|>\n\n";
        let head = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
                    Cutting Knowledge Date: December 2023\nToday Date: ";
        let t31 = include_str!("../tests/templates/llama-3.1-instruct.jinja");
        assert_eq!(render_fixture(t31, "<|begin_of_text|>", "<|eot_id|>"), format!("{head}26 Jul 2024\n\n{tail}"));
        let t32 = include_str!("../tests/templates/llama-3.2-instruct.jinja");
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let today = strftime_utc("%d %b %Y", secs);
        let out = render_fixture(t32, "<|begin_of_text|>", "<|eot_id|>");
        // The date can roll over while the template renders; accept the next day then.
        let later = strftime_utc("%d %b %Y", secs + 120);
        assert!(out == format!("{head}{today}\n\n{tail}") || out == format!("{head}{later}\n\n{tail}"), "{out:?}");
    }

    #[test]
    fn chatml_fallback() {
        // Goal: no template means ChatML; method: two messages with and without the prompt.
        let m = msgs(&[("system", "S"), ("user", "U")]);
        let expect = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n";
        assert_eq!(render_chat(None, &m, false, "", "").ok().as_deref(), Some(expect));
        assert_eq!(render_chat(None, &m, true, "", "").ok(), Some(format!("{expect}<|im_start|>assistant\n")));
    }

    #[test]
    fn python_methods_and_helpers_work() {
        // Goal: pycompat methods and the HF helpers are available; method: a template using them.
        // Booleans print as Python's `True`, as they do under Hugging Face's Jinja2.
        let t = "{{ messages[0].content.strip().split(',')[-1] }}|{{ 'ab'.startswith('a') }}|{{ bos_token }}";
        let m = msgs(&[("user", "  x,y  ")]);
        assert_eq!(render_chat(Some(t), &m, false, "<s>", "").ok().as_deref(), Some("y|True|<s>"));
        let t = "{{ raise_exception('nope') }}";
        let err = render_chat(Some(t), &m, false, "", "");
        assert!(matches!(&err, Err(Error::Template(msg)) if msg.contains("nope")), "{err:?}");
        assert!(render_chat(Some("{% if %}"), &m, false, "", "").is_err());
    }

    #[test]
    fn trim_and_lstrip_blocks_are_on() {
        // Goal: Jinja2's chat-template whitespace settings; method: indented block tags.
        let t = "{% for m in messages %}\n    {% if true %}\n[{{ m.role }}]\n    {% endif %}\n{% endfor %}\n";
        let m = msgs(&[("a", ""), ("b", "")]);
        assert_eq!(render_chat(Some(t), &m, false, "", "").ok().as_deref(), Some("[a]\n[b]\n"));
    }

    #[test]
    fn strftime_formats_utc_dates() {
        // Goal: strftime_now's formatting; method: fixed timestamps.
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
        // 2024-07-26 12:34:56 UTC was a Friday.
        assert_eq!(
            strftime_utc("%A %d %B %Y %H:%M:%S %y %m %% %q", 1_721_997_296),
            "Friday 26 July 2024 12:34:56 24 07 % %q"
        );
        assert_eq!(strftime_utc("%d %b %Y", 951_782_400), "29 Feb 2000");
    }
}
