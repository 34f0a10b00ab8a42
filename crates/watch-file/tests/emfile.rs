//! A read that fails because the process is out of file descriptors ("Too many open files")
//! ends the stream, and the reopening reads again. In a test binary of its own: it uses up
//! the process's descriptors for a moment.

use std::time::Duration;

use futures::StreamExt;
use myelin_source::{Update, UpdateStream};
use myelin_watch_file::file_source;

async fn next(s: &mut UpdateStream) -> Option<Result<Update, myelin_source::SourceError>> {
    tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("an answer within 5 s")
}

#[tokio::test]
async fn out_of_descriptors_ends_the_stream_and_the_reopening_reads_again() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("backends.yaml");
    std::fs::write(&path, "- {host: 127.0.0.1, port: 1}\n").unwrap();
    let quiet = Duration::from_millis(300);
    let mut s = file_source(path.clone(), quiet);
    assert!(matches!(next(&mut s).await, Some(Ok(Update::Reset(v))) if v.len() == 1));

    // A change, then every descriptor taken before the source reads it (after the quiet period).
    std::fs::write(&path, "- {host: 127.0.0.1, port: 1}\n- {host: 127.0.0.1, port: 2}\n").unwrap();
    let mut hoard = Vec::new();
    let err = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hoard.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(err.raw_os_error(), Some(24), "{err}");
    let got = next(&mut s).await;
    let ended = next(&mut s).await;
    drop(hoard);
    match got {
        Some(Err(e)) => assert!(e.report().contains("cannot read: Too many open files"), "{}", e.report()),
        other => panic!("expected the read to fail, got {other:?}"),
    }
    assert!(ended.is_none(), "the stream must end so that it is opened again: {ended:?}");

    // The supervisor's reopening: the file has not changed since, and is read.
    let mut s = file_source(path.clone(), quiet);
    assert!(matches!(next(&mut s).await, Some(Ok(Update::Reset(v))) if v.len() == 2));
}
