//! A fake OpenAI-compatible server for `stepwise bench --provider openai`: it answers every role
//! (planner, executor, verifier, replanner, synthesizer) in the Chat Completions wire format,
//! streamed or not, after a fixed latency, so the bench scenarios measure stepwise's real
//! provider and HTTP path against a separate process.
//!
//! ```sh
//! cargo run --release --example fake_openai_server -- --bind 127.0.0.1:8089 --latency-ms 50
//! OPENAI_BASE_URL=http://127.0.0.1:8089/v1 OPENAI_API_KEY=sk-bench-local \
//!   stepwise bench makespan --provider openai --model fake --latency-ms 50 --depth 4 --width 8
//! ```
//!
//! The plan it returns follows the task: `depth=D width=W` (the makespan bench), `steps=K` (the
//! overhead bench), else a 3-step diamond. The logic lives in `tests/support_llm/fake_openai.rs`,
//! which the tests start in-process.

use std::time::Duration;

use clap::Parser;

#[path = "../tests/support_llm/fake_openai.rs"]
mod fake_openai;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "A fake OpenAI-compatible Chat Completions server for stepwise's benchmarks")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8089")]
    bind: String,
    /// Time every answer takes, in ms (spread over the chunks of a streamed answer).
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.bind).await?;
    // Scripts wait for this line before they start the bench.
    println!("listening on http://{}", listener.local_addr()?);
    let app = fake_openai::app(Duration::from_millis(args.latency_ms));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
