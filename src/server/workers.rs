//! One event loop per worker thread, all accepting from one listening socket, and the index
//! per-worker state (connection pools) is picked by.

use super::*;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The index of the worker thread the caller runs on: 0 outside [`run_workers`]' extra threads.
/// Per-worker state (the proxy's upstream connection pools) is picked by it.
pub fn worker_index() -> usize {
    WORKER.with(std::cell::Cell::get)
}

/// Serves `handler` on `workers` event loops: the caller's runtime is worker 0, and each other
/// worker is a thread with its own single-threaded runtime. All accept from the same listening
/// socket, so a connection lives on one thread from accept to close and its request, upstream
/// connection and body chunks never hop between threads. Returns once every worker has
/// drained after `shutdown`.
pub async fn run_workers<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServeOptions,
    workers: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    // Whichever way this returns, workers already started stop too.
    let _stop_on_return = stop.clone().drop_guard();
    let options = ServeOptions { drain_group: DrainGroup::new(workers), ..options };
    let shared = listener.into_std()?;
    let mut threads = Vec::new();
    for index in 1..workers.max(1) {
        let listener = shared.try_clone()?;
        let (handler, options, worker_stop) = (handler.clone(), options.clone(), stop.clone());
        let group = options.drain_group.clone();
        threads.push(std::thread::Builder::new().name(format!("swiftgate-worker-{index}")).spawn(
            move || -> std::io::Result<()> {
                WORKER.with(|w| w.set(index));
                let served = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        run(listener, handler, options, worker_stop.cancelled_owned()).await;
                        Ok(())
                    })
                });
                if let Err(e) = &served {
                    // The other workers go on serving, and do not wait for this one to drain;
                    // the error is also returned at shutdown.
                    tracing::error!(worker = index, cause = %e, "worker could not start");
                    group.done();
                }
                served
            },
        )?);
    }
    let listener = TcpListener::from_std(shared)?;
    let stopper = async {
        shutdown.await;
        stop.cancel();
    };
    tokio::join!(stopper, run(listener, handler, options, stop.cancelled()));
    let mut result = Ok(());
    for thread in threads {
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        match joined {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => result = Err(e),
            Ok(Err(_)) | Err(_) => result = Err(std::io::Error::other("a worker thread panicked")),
        }
    }
    result
}
