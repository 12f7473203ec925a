//! Manual kubelet-side client for the plugin's sockets (debugging aid, v1 API):
//!
//! ```sh
//! cargo run -p dra --example kubelet_call -- info <registration.sock>
//! cargo run -p dra --example kubelet_call -- prepare <dra.sock> <namespace> <name> <uid>
//! cargo run -p dra --example kubelet_call -- unprepare <dra.sock> <namespace> <name> <uid>
//! ```

use std::path::Path;

use dra::grpc::pb;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: info SOCK | prepare SOCK NS NAME UID | unprepare SOCK NS NAME UID";
    let (cmd, sock) = match (a.first(), a.get(1)) {
        (Some(c), Some(s)) => (c.as_str(), Path::new(s)),
        _ => return Err(usage.into()),
    };
    let ch = dra::grpc::unix_channel(sock).await?;
    let claim = || -> Result<pb::v1::Claim, String> {
        match (a.get(2), a.get(3), a.get(4)) {
            (Some(ns), Some(name), Some(uid)) => Ok(pb::v1::Claim {
                namespace: ns.clone(),
                name: name.clone(),
                uid: uid.clone(),
            }),
            _ => Err(usage.to_string()),
        }
    };
    match cmd {
        "info" => {
            let mut c = pb::registration::registration_client::RegistrationClient::new(ch);
            println!(
                "{:?}",
                c.get_info(pb::registration::InfoRequest {})
                    .await?
                    .into_inner()
            );
        }
        "prepare" => {
            let mut c = pb::v1::dra_plugin_client::DraPluginClient::new(ch);
            let r = c
                .node_prepare_resources(pb::v1::NodePrepareResourcesRequest {
                    claims: vec![claim()?],
                })
                .await?;
            println!("{:?}", r.into_inner());
        }
        "unprepare" => {
            let mut c = pb::v1::dra_plugin_client::DraPluginClient::new(ch);
            let r = c
                .node_unprepare_resources(pb::v1::NodeUnprepareResourcesRequest {
                    claims: vec![claim()?],
                })
                .await?;
            println!("{:?}", r.into_inner());
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
