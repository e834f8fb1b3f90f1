//! Worker threads and their CPUs (`server.cpu_affinity`), seen in
//! `/status` and in the kernel's own record of each thread.

use switchyard_tests::*;

const ROUTE: &str = "[pools.p]\nbackends = [{ name = \"m\", address = \"ADDR\" }]\n\n\
                     [[routes]]\nname = \"r\"\npool = \"p\"\n";

fn route(backend: &MockBackend) -> String {
    ROUTE.replace("ADDR", &backend.addr.to_string())
}

/// `/status`'s `workers[].cpu` once it reads `expected` (workers bind as
/// they start), or after 5 s whatever it reads then.
async fn worker_cpus(proxy: &TestProxy, expected: &[Option<usize>]) -> Vec<Option<usize>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = proxy.status().await;
        let cpus: Vec<Option<usize>> = status["workers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|w| w["cpu"].as_u64().map(|c| c as usize))
            .collect();
        if cpus == expected || std::time::Instant::now() > deadline {
            return cpus;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// CPUs the kernel lets each thread of this process named like a worker
/// run on, as `/proc/self/task/*/status` shows them.
fn worker_thread_cpus() -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("switchyard-work") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            out.push(line["Cpus_allowed_list:".len()..].trim().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_get_a_cpu_each_when_as_many_as_the_process_may_use() {
    let allowed = switchyard::cpus::allowed().unwrap_or_else(|e| panic!("{e}"));
    let backend = mock("m");
    let server = format!("workers = {}\ncpu_affinity = \"auto\"", allowed.len());
    let proxy = TestProxy::start_full(&route(&backend), &server, None);
    let expected: Vec<_> = allowed.iter().copied().map(Some).collect();
    assert_eq!(worker_cpus(&proxy, &expected).await, expected);
    // The kernel agrees: a worker thread is bound to each of those CPUs.
    let threads = worker_thread_cpus();
    for cpu in &allowed {
        assert!(
            threads.contains(&cpu.to_string()),
            "no worker on CPU {cpu}: {threads:?}"
        );
    }
    for _ in 0..20 {
        assert_eq!(get(&proxy.url("/x"), &[]).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stay_unbound_by_default_and_when_more_than_the_cpus() {
    let allowed = switchyard::cpus::allowed().unwrap_or_else(|e| panic!("{e}"));
    let backend = mock("m");
    let more = format!("workers = {}\ncpu_affinity = \"auto\"", allowed.len() + 1);
    let proxy = TestProxy::start_full(&route(&backend), &more, None);
    let unbound = vec![None; allowed.len() + 1];
    assert_eq!(worker_cpus(&proxy, &unbound).await, unbound);
    drop(proxy);
    // The default.
    let off = format!("workers = {}", allowed.len());
    let proxy = TestProxy::start_full(&route(&backend), &off, None);
    let unbound = vec![None; allowed.len()];
    assert_eq!(worker_cpus(&proxy, &unbound).await, unbound);
    assert_eq!(get(&proxy.url("/x"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_list_is_taken_in_turn_and_a_cpu_the_process_may_not_use_is_refused() {
    let allowed = switchyard::cpus::allowed().unwrap_or_else(|e| panic!("{e}"));
    let last = *allowed
        .last()
        .unwrap_or_else(|| unreachable!("a process has a CPU"));
    let backend = mock("m");
    let listed = format!("workers = 3\ncpu_affinity = [{last}]");
    let proxy = TestProxy::start_full(&route(&backend), &listed, None);
    let expected = vec![Some(last); 3];
    assert_eq!(worker_cpus(&proxy, &expected).await, expected);
    assert_eq!(get(&proxy.url("/x"), &[]).await.status, 200);
    drop(proxy);
    let outside = (0..1024).find(|c| !allowed.contains(c)).unwrap_or(1023);
    let refused = format!("workers = 1\ncpu_affinity = [{outside}]");
    let err = TestProxy::try_start_server(&route(&backend), &refused)
        .err()
        .unwrap_or_else(|| panic!("CPU {outside} was accepted"));
    assert!(
        err.contains(&format!(
            "server.cpu_affinity: CPU {outside} is not one this process may run on"
        )),
        "{err}"
    );
}
