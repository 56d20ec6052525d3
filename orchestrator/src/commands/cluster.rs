//! The cluster steps in the node: kubeadm init/join/reset, the CNI,
//! sync-external-ip, and what a user takes out of the node (kubeconfig,
//! kubectl, the join file).

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use u7s::kubeadm;

use super::{running_node, step, write_private, Context};

pub async fn kubeadm_init(ctx: &Context) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    step("kubeadm init (takes minutes)");
    kubeadm::kubeadm_init(&node, &ctx.config).await?;
    let n = kubeadm::sync_external_ip(&node).await?;
    step(format!(
        "control plane is up; sync-external-ip made {n} change(s). next: `u7s install-cni`"
    ));
    Ok(0)
}

pub async fn install_cni(ctx: &Context) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    step(format!(
        "installing Flannel (VXLAN on UDP {})",
        ctx.config.ports.flannel
    ));
    kubeadm::install_cni(&node, &ctx.config).await?;
    Ok(0)
}

pub async fn kubeconfig(ctx: &Context, output: &Path) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let text = kubeadm::kubeconfig(&node, &ctx.config).await?;
    write_private(output, text.as_bytes(), 0o600)?;
    let shown = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
    step(format!(
        "wrote {}; use it with: export KUBECONFIG={}",
        output.display(),
        shown.display()
    ));
    Ok(0)
}

pub async fn kubectl(ctx: &Context, output: &Path) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let out = kubeadm::check(
        &node,
        &["sh".into(), "-c".into(), "cat \"$(command -v kubectl)\"".into()],
        false,
    )
    .await
    .context("copying kubectl out of the node")?;
    if out.stdout.len() < 4 || &out.stdout[..4] != b"\x7fELF" {
        bail!(
            "the node's kubectl is not an executable ({} bytes)",
            out.stdout.len()
        );
    }
    write_private(output, &out.stdout, 0o755)?;
    step(format!(
        "wrote {} ({} MB)",
        output.display(),
        out.stdout.len() / 1_000_000
    ));
    Ok(0)
}

pub async fn join_command(ctx: &Context, output: &Path) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let out = kubeadm::check(&node, &kubeadm::join_token_command(), false).await?;
    let text = kubeadm::join_file(&ctx.config, &out.stdout_text())?;
    write_private(output, text.as_bytes(), 0o600)?;
    step(format!(
        "wrote {} (holds a bootstrap token, valid 24 h): copy it to the joining host and run `u7s up && u7s kubeadm-join` there",
        output.display()
    ));
    Ok(0)
}

pub async fn kubeadm_join(ctx: &Context, file: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "reading {} (make it with `u7s join-command` on the control-plane host)",
            file.display()
        )
    })?;
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    step("kubeadm join");
    kubeadm::kubeadm_join(&node, &ctx.config, &text).await?;
    step("joined; run `u7s sync-external-ip` on the control-plane host");
    Ok(0)
}

pub async fn sync_external_ip(ctx: &Context) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    let n = kubeadm::sync_external_ip(&node).await?;
    step(format!("{n} change(s) applied"));
    Ok(0)
}

pub async fn kubeadm_reset(ctx: &Context) -> Result<i32> {
    let engine = ctx.engine().await?;
    let node = running_node(ctx, &engine).await?;
    kubeadm::check(&node, &kubeadm::kubeadm_reset_command(), true).await?;
    Ok(0)
}
