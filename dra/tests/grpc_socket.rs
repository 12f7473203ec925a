//! The kubelet-facing gRPC services over real Unix sockets (tonic client as the peer).

use std::path::Path;
use std::sync::Arc;

use dra::grpc::pb;
use dra::prepare::{allocated_claim, Config, MapSource, Preparer};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

const DRV: &str = "mock-accel.example.com";

async fn channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    for _ in 0..100 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .expect("connect")
}

fn claim(uid: &str, name: &str) -> pb::v1::Claim {
    pb::v1::Claim {
        namespace: "default".into(),
        uid: uid.into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn kubelet_sockets_register_prepare_unprepare_and_report_health() {
    let t = tempfile::tempdir().expect("tmp");
    let root = t.path().join("root");
    dra::fixture::write_basic(&root).expect("fixture");
    let plugin_dir = t.path().join("plugins").join(DRV);
    let cfg = Config {
        driver: DRV.into(),
        node: "node1".into(),
        sysfs_root: root.clone(),
        cdi_root: t.path().join("cdi"),
        checkpoint: plugin_dir.join("checkpoint.json"),
    };
    let src = Arc::new(MapSource::default());
    src.insert(allocated_claim(
        "default",
        "two",
        "uid-two",
        &[
            ("a", DRV, "node1", "mock0"),
            ("b", DRV, "node1", "mock1-vf0"),
        ],
    ));
    src.insert(allocated_claim(
        "default",
        "one",
        "uid-one",
        &[("a", DRV, "node1", "mock1")],
    ));
    let preparer = Arc::new(Preparer::new(cfg.clone(), src.clone()).expect("preparer"));
    let sockets = dra::grpc::Sockets::new(&t.path().join("registry"), &plugin_dir, DRV);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let s2 = sockets.clone();
    let server = tokio::spawn(async move {
        dra::grpc::serve(&s2, DRV, preparer, async {
            let _ = stop_rx.await;
        })
        .await
    });

    // Registration.
    let mut reg = pb::registration::registration_client::RegistrationClient::new(
        channel(&sockets.registration).await,
    );
    let info = reg
        .get_info(pb::registration::InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, DRV);
    assert_eq!(info.endpoint, sockets.dra.to_string_lossy());
    assert_eq!(
        info.supported_versions,
        ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    );
    reg.notify_registration_status(pb::registration::RegistrationStatus {
        plugin_registered: true,
        error: String::new(),
    })
    .await
    .expect("notify");

    let ch = channel(&sockets.dra).await;
    // Health.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    dra::grpc::health_check(&sockets.dra)
        .await
        .expect("healthcheck subcommand logic");

    // v1 prepare: one good two-device claim, one missing claim -> per-claim error, RPC ok.
    let mut v1 = pb::v1::dra_plugin_client::DraPluginClient::new(ch.clone());
    let resp = v1
        .node_prepare_resources(pb::v1::NodePrepareResourcesRequest {
            claims: vec![claim("uid-two", "two"), claim("uid-missing", "missing")],
        })
        .await
        .expect("prepare RPC")
        .into_inner();
    let two = &resp.claims["uid-two"];
    assert_eq!(two.error, "");
    let ids: Vec<_> = two
        .devices
        .iter()
        .flat_map(|d| d.cdi_device_ids.clone())
        .collect();
    assert_eq!(
        ids,
        [
            "mock-accel.example.com/device=uid-two-mock0",
            "mock-accel.example.com/device=uid-two-mock1-vf0"
        ]
    );
    assert_eq!(two.devices[1].pool_name, "node1");
    assert_eq!(two.devices[1].request_names, ["b"]);
    assert!(resp.claims["uid-missing"].error.contains("not found"));
    let status = |n: &str| dra::sysfs::read_device(&root, n).expect("dev").status;
    assert_eq!((status("mock0"), status("mock1_vf0")), (1, 1));
    assert!(dra::cdi::spec_path(&cfg.cdi_root, DRV, "uid-two").exists());

    // v1beta1 prepare of another claim.
    let mut b1 = pb::v1beta1::dra_plugin_client::DraPluginClient::new(ch.clone());
    let r = b1
        .node_prepare_resources(pb::v1beta1::NodePrepareResourcesRequest {
            claims: vec![pb::v1beta1::Claim {
                namespace: "default".into(),
                uid: "uid-one".into(),
                name: "one".into(),
            }],
        })
        .await
        .expect("v1beta1 prepare")
        .into_inner();
    assert_eq!(
        r.claims["uid-one"].devices[0].cdi_device_ids,
        ["mock-accel.example.com/device=uid-one-mock1"]
    );

    // Unprepare both.
    let u = v1
        .node_unprepare_resources(pb::v1::NodeUnprepareResourcesRequest {
            claims: vec![claim("uid-two", "two"), claim("uid-one", "one")],
        })
        .await
        .expect("unprepare")
        .into_inner();
    assert!(u.claims.values().all(|c| c.error.is_empty()));
    assert_eq!(
        (status("mock0"), status("mock1_vf0"), status("mock1")),
        (0, 0, 0)
    );
    assert!(!dra::cdi::spec_path(&cfg.cdi_root, DRV, "uid-two").exists());

    let _ = stop_tx.send(());
    server.await.expect("join").expect("serve");
    assert!(
        !sockets.registration.exists(),
        "registration socket removed on shutdown"
    );
}
