//! `tuwen`: the command-line front end of the tuwen vision-language crates.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tuwen_cli::{device, parity};
use tuwen_tokenizer::{BertTokenizer, TokenizerOptions};

#[derive(Parser)]
#[command(
    name = "tuwen",
    version,
    about = "Vision-language pretraining and fine-tuning in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print, per text, one line with the JSON array of token ids (with [CLS]/[SEP]).
    ///
    /// Without --vocab/--tokenizer, the bert-base-uncased vocabulary fetched by
    /// `cargo xtask assets` is used.
    Tokenize {
        /// A BERT `vocab.txt`.
        #[arg(long, conflicts_with = "tokenizer")]
        vocab: Option<PathBuf>,
        /// A HF `tokenizer.json`.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Treat the vocabulary as cased (no lowercasing); only with --vocab.
        #[arg(long)]
        cased: bool,
        /// Maximum length including [CLS] and [SEP].
        #[arg(long, default_value_t = 512)]
        max_len: usize,
        /// The texts.
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Compare a model with reference outputs stored in a fixture directory
    /// (config.json, model.safetensors, inputs.safetensors, expected.safetensors).
    Parity {
        /// The fixture directory.
        dir: PathBuf,
        /// Backend: flex, ndarray, wgpu, cuda (those compiled in).
        #[arg(long, default_value = "flex")]
        device: String,
        /// Maximum absolute difference allowed per output.
        #[arg(long, default_value_t = 1e-4)]
        tol: f32,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tokenize {
            vocab,
            tokenizer,
            cased,
            max_len,
            texts,
        } => {
            let options = TokenizerOptions::default()
                .with_max_len(max_len)
                .with_lowercase(!cased);
            let tok = match (vocab, tokenizer) {
                (Some(v), _) => BertTokenizer::from_vocab(v, options)?,
                (None, Some(t)) => BertTokenizer::from_tokenizer_json(t, options)?,
                (None, None) => {
                    let v = tuwen_assets::locate("minilm", "vocab.txt").context(
                        "no --vocab or --tokenizer given and the default vocabulary is missing",
                    )?;
                    BertTokenizer::from_vocab(v, options)?
                }
            };
            let mut out = std::io::stdout().lock();
            for text in &texts {
                let enc = tok.encode(text)?;
                writeln!(out, "{}", serde_json::to_string(&enc.ids)?)?;
            }
            Ok(())
        }
        Command::Parity { dir, device, tol } => {
            let device = device::parse(&device)?;
            let report = parity::run(&dir, &device, tol)
                .with_context(|| format!("parity fixture {}", dir.display()))?;
            println!("{report}");
            anyhow::ensure!(report.passed(), "parity failed for {}", dir.display());
            Ok(())
        }
    }
}
