//! The ABI in-process: a test backend goes through its real descriptor and the host-side client.

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use api::client::{HandshakeError, Plugin};
use api::ffi::*;
use api::protocol::{PROTOCOL_VERSION, Request};
use api::{Backend, Error, Host, Kind, OpContext};

struct Test {
    prefix: String,
}

impl Backend for Test {
    const NAME: &'static str = "test";
    const VERSION: &'static str = "1.2.3";
    const KIND: Kind = Kind::Judge;

    fn ops() -> Vec<api::protocol::OpInfo> {
        ["echo", "fail", "panic", "cancel"].iter().map(|o| api::op(o, "")).collect()
    }

    fn create(config: &serde_json::Value) -> Result<Self, Error> {
        Ok(Test { prefix: config["prefix"].as_str().unwrap_or("").to_string() })
    }

    fn validate(&self, _op: &str, params: &serde_json::Value, _inputs: &[String]) -> Result<(), Error> {
        match params.get("n") {
            Some(n) if !n.is_u64() => Err(Error::param(&["n"], "`n` must be a count")),
            _ => Ok(()),
        }
    }

    fn invoke(&mut self, op: &str, ctx: &mut OpContext<'_>) -> Result<serde_json::Value, Error> {
        match op {
            "echo" => {
                ctx.log("echoing");
                ctx.progress(1, 2);
                std::fs::write(ctx.out_dir.join("out.txt"), format!("{}{}", self.prefix, ctx.params["text"]))?;
                Ok(serde_json::json!({"ok": true}))
            }
            "fail" => Err(Error::Failed("it failed".into())),
            "panic" => panic!("boom"),
            _ => {
                while !ctx.cancelled() {}
                Err(Error::Cancelled)
            }
        }
    }
}

api::declare_plugin!(Test);

#[derive(Default)]
struct Recorder {
    lines: RefCell<Vec<String>>,
    cancel: bool,
}

impl Host for Recorder {
    fn log(&self, _level: u32, message: &str) {
        self.lines.borrow_mut().push(message.to_string());
    }
    fn progress(&self, done: u64, total: u64, _message: &str) {
        self.lines.borrow_mut().push(format!("{done}/{total}"));
    }
    fn is_cancelled(&self) -> bool {
        self.cancel
    }
}

fn request(dir: &std::path::Path, params: serde_json::Value) -> Request {
    Request {
        protocol: PROTOCOL_VERSION.into(),
        stage_id: "s".into(),
        params,
        inputs: Default::default(),
        out_dir: dir.to_path_buf(),
        scratch_dir: dir.to_path_buf(),
        gpus: vec![],
        validate_only: false,
    }
}

/// One test, so that the process-wide buffer counter is not shared with parallel tests.
#[test]
fn a_backend_round_trips_through_its_descriptor_and_every_buffer_is_released_once() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: a static descriptor of this test binary.
    let plugin = unsafe { Plugin::from_raw(descriptor()) }.unwrap();
    assert_eq!(plugin.description.name, "test");
    assert_eq!(plugin.description.version, "1.2.3");
    assert_eq!(plugin.description.kind, "judge");
    let mut instance = plugin.create(&serde_json::json!({"prefix": "> "})).unwrap();
    let host = Recorder::default();

    let ok = instance.invoke("echo", &request(dir.path(), serde_json::json!({"text": "hi"})), &host).unwrap();
    assert_eq!(ok, serde_json::json!({"ok": true}));
    assert_eq!(std::fs::read_to_string(dir.path().join("out.txt")).unwrap(), "> \"hi\"");
    assert_eq!(*host.lines.borrow(), ["echoing", "1/2"]);

    let e = instance.invoke("fail", &request(dir.path(), serde_json::json!({})), &host).unwrap_err();
    assert_eq!((e.status, e.reply.message.as_str()), (STATUS_ERROR, "it failed"));

    let e = instance.invoke("echo", &request(dir.path(), serde_json::json!({"n": "x"})), &host).unwrap_err();
    assert_eq!(e.status, STATUS_BAD_INPUT);
    assert_eq!(e.reply.param_path, Some(vec!["n".to_string()]));

    let e = instance.invoke("panic", &request(dir.path(), serde_json::json!({})), &host).unwrap_err();
    assert_eq!(e.status, STATUS_PANIC);
    assert!(e.reply.message.contains("boom"), "{}", e.reply.message);

    let e = instance.invoke("nope", &request(dir.path(), serde_json::json!({})), &host).unwrap_err();
    assert_eq!(e.status, STATUS_UNSUPPORTED_OP);

    let cancelling = Recorder { cancel: true, ..Default::default() };
    let e = instance.invoke("cancel", &request(dir.path(), serde_json::json!({})), &cancelling).unwrap_err();
    assert_eq!(e.status, STATUS_CANCELLED);

    // The instance still works after a caught panic.
    instance.invoke("echo", &request(dir.path(), serde_json::json!({"text": 1})), &host).unwrap();
    drop(instance);
    assert_eq!(api::export::LIVE_BUFFERS.load(Ordering::SeqCst), 0, "every buffer released exactly once");
}

#[test]
fn foreign_descriptors_are_refused_before_any_call() {
    let good = descriptor();
    let copy = |f: &dyn Fn(&mut PluginVTable)| {
        let mut v = PluginVTable { ..*good };
        f(&mut v);
        Box::leak(Box::new(v)) as *const PluginVTable
    };
    let check = |ptr: *const PluginVTable| unsafe { Plugin::from_raw(ptr) }.unwrap_err();
    assert_eq!(check(std::ptr::null()), HandshakeError::Null);
    assert!(matches!(check(copy(&|v| v.magic = 7)), HandshakeError::BadMagic(7)));
    assert_eq!(check(copy(&|v| v.abi_major = 999)), HandshakeError::AbiMajor(999));
    assert_eq!(check(copy(&|v| v.struct_size = 8)), HandshakeError::TooSmall(8));
    let msg = HandshakeError::AbiMajor(999).to_string();
    assert!(msg.contains("rebuild the plugin"), "{msg}");
}
