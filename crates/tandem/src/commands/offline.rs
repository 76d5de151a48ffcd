//! Commands that need no server: `init`, `validate`, `render`, `graph`, `test rules`.

use super::Ctx;
use crate::cli::{GraphOutput, RenderOutput, TestWhat};
use crate::output;
use anyhow::{Context, Result, bail};

pub(crate) fn init(ctx: &Ctx) -> Result<u8> {
    if ctx.file.exists() {
        bail!(
            "{} already exists; tandem init never overwrites a system file\n  hint: edit it, or pass -f NEW_FILE to write a starter elsewhere",
            ctx.file.display()
        );
    }
    std::fs::write(&ctx.file, tandem_spec::STARTER_FILE)
        .with_context(|| format!("cannot write {}", ctx.file.display()))?;
    println!(
        "wrote {}: edit it, then `tandem validate` and `tandem up`",
        ctx.file.display()
    );
    Ok(0)
}

pub(crate) fn validate(ctx: &Ctx) -> Result<u8> {
    let text = match std::fs::read_to_string(&ctx.file) {
        Ok(t) => t,
        Err(_) => {
            // `load` renders the unreadable-file diagnostic with its hint.
            let _ = ctx.load()?;
            return Ok(1);
        }
    };
    let display = ctx.file.display().to_string();
    let result = match &ctx.env_flag {
        Some(env) => tandem_spec::resolve(&display, &text, &ctx.project_dir, env).map(|s| vec![s]),
        None => tandem_spec::validate_all(&display, &text, &ctx.project_dir),
    };
    match result {
        Ok(systems) => {
            let mut warnings: Vec<String> =
                systems.iter().flat_map(tandem_spec::tls_warnings).collect();
            warnings.sort();
            warnings.dedup();
            for warning in warnings {
                eprintln!("{} {warning}", output::yellow("warning:"));
            }
            let envs: Vec<&str> = systems.iter().map(|s| s.env.as_str()).collect();
            let services = systems.first().map(|s| s.service.len()).unwrap_or(0);
            println!(
                "{} {display} is valid: {services} service{} in {}",
                output::green("ok:"),
                if services == 1 { "" } else { "s" },
                envs.join(", ")
            );
            Ok(0)
        }
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            let n = diagnostics.0.len();
            eprintln!("{display}: {n} error{}", if n == 1 { "" } else { "s" });
            Ok(1)
        }
    }
}

pub(crate) fn render(ctx: &Ctx, format: RenderOutput) -> Result<u8> {
    let system = ctx.load()?;
    match format {
        RenderOutput::Toml => print!("{}", tandem_spec::render_toml(&system)),
        RenderOutput::Json => println!("{}", tandem_spec::render_json(&system)),
    }
    Ok(0)
}

pub(crate) fn graph(ctx: &Ctx, format: GraphOutput) -> Result<u8> {
    let system = ctx.load()?;
    match format {
        GraphOutput::Text => print!("{}", tandem_spec::graph_text(&system)),
        GraphOutput::Dot => print!("{}", tandem_spec::graph_dot(&system)),
    }
    Ok(0)
}

/// `tandem test rules FILE...`: promtool's report on stdout; exit 0 all pass, 1 a failure.
pub(crate) fn test(what: TestWhat) -> Result<u8> {
    match what {
        TestWhat::Rules { files } => {
            let passed = tandem_alert::test_rules(&files, &mut std::io::stdout().lock())?;
            Ok(if passed { 0 } else { 1 })
        }
    }
}
