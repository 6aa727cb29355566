//! Asking the judge many things at once: `concurrency` worker threads take requests from a queue, and the
//! op's own thread collects the answers, logs the retries, reports progress and watches for cancellation.
//!
//! The host's callbacks (log, progress, cancellation) are only called from the op's thread: the host gives no
//! guarantee they may be called from others. On cancellation or a failed request the op returns at once; the
//! workers see the stop flag, abandon their waits and end after at most their one request in flight (whose
//! answer, if it arrives, still goes into the item cache: it is a finished item). Each answer is in the item
//! cache, durable, before it counts as done.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{Error, OpContext};
use serde_json::Value;

use crate::client::{Answer, CallError, Client};
use crate::item_cache::ItemCache;

/// One request to make, with its cache key.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub key: String,
    pub body: Value,
}

enum Msg {
    Done(String, Answer),
    Failed(String),
    Notice(String),
}

/// How often the op's thread looks at the cancellation flag while it waits for answers.
const POLL: Duration = Duration::from_millis(50);

/// Answers every request from the endpoint, `concurrency` at a time, appending each to `cache` (when given)
/// before it counts. `progress` is `(already done, total)` for the progress line. The answers come back by key.
pub(crate) fn answer_all(
    ctx: &OpContext<'_>,
    client: &Arc<Client>,
    cache: Option<&Arc<ItemCache>>,
    requests: Vec<Request>,
    concurrency: usize,
    progress: Option<(u64, u64)>,
) -> Result<BTreeMap<String, Answer>, Error> {
    let mut answers = BTreeMap::new();
    if requests.is_empty() {
        return Ok(answers);
    }
    let wanted = requests.len();
    let workers = concurrency.clamp(1, wanted);
    let queue = Arc::new(Mutex::new(VecDeque::from(requests)));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = channel::<Msg>();
    for _ in 0..workers {
        let (queue, stop, tx) = (Arc::clone(&queue), Arc::clone(&stop), tx.clone());
        let (client, cache) = (Arc::clone(client), cache.map(Arc::clone));
        std::thread::Builder::new()
            .name("judge-openai".into())
            .spawn(move || worker(&client, cache.as_deref(), &queue, &stop, &tx))
            .map_err(|e| Error::Failed(format!("cannot start a request thread: {e}")))?;
    }
    drop(tx);
    // Stops the workers however this function is left.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let (mut done, total) = progress.unwrap_or((0, 0));
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Msg::Done(key, answer)) => {
                answers.insert(key, answer);
                done += 1;
                if progress.is_some() {
                    ctx.progress(done, total);
                }
            }
            Ok(Msg::Notice(text)) => ctx.log(&text),
            Ok(Msg::Failed(message)) => return Err(Error::Failed(message)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if ctx.cancelled() {
            return Err(Error::Cancelled);
        }
    }
    if answers.len() != wanted {
        return Err(Error::Failed(format!("internal: {} of {wanted} requests answered", answers.len())));
    }
    Ok(answers)
}

fn worker(
    client: &Client,
    cache: Option<&ItemCache>,
    queue: &Mutex<VecDeque<Request>>,
    stop: &AtomicBool,
    tx: &Sender<Msg>,
) {
    let notice = |text: String| {
        let _ = tx.send(Msg::Notice(text));
    };
    while !stop.load(Ordering::Relaxed) {
        let Some(request) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else { return };
        match client.complete(&request.body, stop, &notice) {
            Ok(answer) => {
                if let Some(cache) = cache
                    && let Err(e) = cache.append(&request.key, &answer)
                {
                    let _ = tx.send(Msg::Failed(e));
                    return;
                }
                let _ = tx.send(Msg::Done(request.key, answer));
            }
            Err(CallError::Stopped) => return,
            Err(CallError::Failed(message)) => {
                let _ = tx.send(Msg::Failed(message));
                return;
            }
        }
    }
}
