//! `switchyard plugin`: scaffold, build and try out plugins.

use super::{
    PluginKind, SdkSource, TrialOptions, build, is_workspace, scaffold, scaffold_standalone, trial,
};
use std::path::{Path, PathBuf};

/// `switchyard plugin ...`.
#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// Create a router, health-check or breaker crate that builds and
    /// passes its tests. Inside a Switchyard checkout (or with --root) the crate goes to
    /// plugins/NAME as a workspace member; anywhere else, NAME/ is a
    /// standalone crate depending on the SDK.
    New {
        name: String,
        /// The Switchyard workspace root.
        #[arg(long)]
        root: Option<PathBuf>,
        /// What the plugin is.
        #[arg(long, value_enum, default_value_t)]
        kind: PluginKind,
        /// A standalone crate's SDK: a path or a git URL; default: the SDK
        /// of the checkout this binary was built from.
        #[arg(long)]
        sdk: Option<String>,
    },
    /// Build a plugin crate for wasm32-wasip2, check the component against
    /// the interface versions this host speaks, and say where it went.
    Build {
        /// The plugin crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Copy the .wasm into this directory (a proxy's plugin directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a compiled router against synthetic backends and print its decisions.
    Test(TrialOptions),
}

/// Runs one `plugin` subcommand.
pub fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New {
            name,
            root,
            kind,
            sdk,
        } => {
            if root.is_none() && !is_workspace(Path::new(".")) {
                let sdk = SdkSource::resolve(sdk.as_deref())?;
                let dir = scaffold_standalone(Path::new(&name), kind, &sdk)?;
                println!("created the standalone crate {}. Next:", dir.display());
                println!("  cd {name} && cargo test");
                println!("  switchyard plugin build {name} --out <your plugin dir>");
                return Ok(());
            }
            let root = root.unwrap_or_else(|| PathBuf::from("."));
            let dir = scaffold(&root, &name, kind)?;
            println!(
                "created {} and added it to the workspace. Next:",
                dir.display()
            );
            println!("  cargo test -p {name}");
            println!("  ./scripts/build-plugins.sh");
            if kind == PluginKind::Router {
                println!("  switchyard plugin test target/plugins/{name}.wasm --backends 4");
            }
            println!(
                "  cp target/plugins/{name}.wasm <your plugin dir>/   # a running proxy reloads it"
            );
            Ok(())
        }
        PluginCommand::Build { dir, out } => {
            let built = build(&dir, out.as_deref())?;
            println!(
                "built {} ({} plugin, interface {})",
                built.file.display(),
                built.interface,
                built.version
            );
            Ok(())
        }
        PluginCommand::Test(options) => {
            print!("{}", trial(&options)?);
            Ok(())
        }
    }
}
