//! All the file sources of a process share one inotify instance. In a test binary of its own:
//! it counts the process's inotify descriptors and watches.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use myelin_source::Update;
use myelin_watch_file::file_source;

/// The process's inotify descriptors.
fn inotify_fds() -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("inotify")))
        .map(|e| e.path())
        .collect()
}

/// The watches an inotify descriptor holds (one `inotify wd:` line each in its fdinfo).
fn watches(fd: &std::path::Path) -> usize {
    let info = PathBuf::from("/proc/self/fdinfo").join(fd.file_name().unwrap());
    std::fs::read_to_string(info).unwrap_or_default().lines().filter(|l| l.starts_with("inotify wd:")).count()
}

#[tokio::test]
async fn two_hundred_sources_share_one_inotify_instance_and_drop_their_watches() {
    // More than `fs.inotify.max_user_instances` (128 by default, for every process of the user).
    const N: usize = 200;
    let before = inotify_fds();
    let tmp = tempfile::tempdir().unwrap();
    let mut streams = Vec::new();
    for i in 0..N {
        let dir = tmp.path().join(format!("d{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("backends.yaml"), format!("- {{host: 127.0.0.1, port: {}}}\n", 1000 + i)).unwrap();
        streams.push(file_source(dir.join("backends.yaml"), Duration::from_millis(20)));
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let first = tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("an update").expect("stream open");
        assert!(matches!(&first, Ok(Update::Reset(v)) if v.len() == 1 && v[0].port == (1000 + i).to_string()), "source {i}: {first:?}");
    }
    let after = inotify_fds();
    assert_eq!(after.len(), before.len() + 1, "{before:?} -> {after:?}");
    let hub = after.iter().find(|fd| !before.contains(fd)).unwrap().clone();
    // Each directory once, and the ancestors of the temporary directory.
    let held = watches(&hub);
    assert!(held > N && held < N + 10, "{held} watches");

    // Half the sources gone: their directories are unwatched; all gone: nothing is watched.
    streams.truncate(N / 2);
    assert!(watches(&hub) <= held - N / 2, "{} watches", watches(&hub));
    drop(streams);
    assert_eq!(watches(&hub), 0);
}
