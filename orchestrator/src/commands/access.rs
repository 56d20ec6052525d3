//! Into the node: a shell or a command, its journal or console.

use anyhow::{bail, Result};

use super::{running_node, Context};

pub async fn shell(ctx: &Context, command: Vec<String>) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let argv = if command.is_empty() {
        vec!["bash".to_owned()]
    } else {
        command
    };
    let code = engine.exec_interactive(&node.container, &argv).await?;
    if code == 126 || code == 127 {
        eprintln!("u7s: {:?} could not be run in the node (exit {code})", argv[0]);
    }
    Ok(i32::try_from(code).unwrap_or(1))
}

pub async fn logs(ctx: &Context, console: bool, follow: bool) -> Result<i32> {
    let engine = ctx.engine().await?;
    let name = ctx.container();
    if console {
        if engine.container(&name).await?.is_none() {
            bail!("there is no node container {name}: create it with `u7s up`");
        }
        engine.logs(&name, follow, None).await?;
        return Ok(0);
    }
    let node = running_node(ctx, &engine).await?;
    let mut argv: Vec<String> = ["journalctl", "--no-pager", "--since", "10 min ago"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if follow {
        argv.push("--follow".into());
    }
    let out = engine.exec(&node.container, &argv, true).await?;
    if out.code == 126 || out.code == 127 {
        bail!("the node has no journalctl (not a systemd node image?): use `u7s logs --console` for its console output");
    }
    Ok(i32::try_from(out.code).unwrap_or(1))
}
