import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// How the service reports what goes wrong on the model side, and the sweeper's clean-up of
/// files no task refers to.
@Suite struct FailureTests {
    @Test func outOfMemoryEndsFailedWithTheHintAndTheNextTaskRuns() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker()
        await worker.setFailure(.oom, "out of memory: lower the resolution (image_size) or num_frames")
        let app = try await makeTestApp(dataDir: directory.url, worker: worker)
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png")
                let failed = try await client.waitFor(id, status: "Failed")
                #expect(failed["status"] as? String == "Failed")
                let reason = try #require(failed["reason"] as? String)
                #expect(reason.contains("out of memory") && reason.contains("lower the resolution"))
                #expect(failed["results"] == nil)

                await worker.setFailure(.internal, "RuntimeError: boom")
                let other = try await client.submit(imageURL: "\(base)/image.png")
                let internalFailure = try await client.waitFor(other, status: "Failed")
                #expect(internalFailure["reason"] as? String == "inference failed: RuntimeError: boom")
                let metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                #expect(metrics.contains(#"i2v_task_outcomes_total{status="Failed"} 2"#))
            }
        }
    }

    @Test func aJobThatCannotFitIs500BeforeItIsQueued() async throws {
        let directory = try TemporaryDirectory()
        let worker = FakeWorker(ready: true)
        // 160×80 with 25 frames is 10·5·7 = 350 latent tokens.
        await worker.setMemory(freeBytes: 349 * 1_000_000, bytesPerToken: 1_000_000)
        let app = try await makeTestApp(dataDir: directory.url, worker: worker)
        try await withImageServer { base in
            try await app.test(.router) { client in
                let refused = try await client.post(
                    "/video/submit",
                    json: SubmitValidationTests.body(["num_frames": "24"], imageURL: "\(base)/image.png")
                )
                #expect(refused.status == .internalServerError)
                #expect(refused.failureReason?.contains("lower the resolution (image_size) or num_frames") == true)
                #expect(try FileManager.default.contentsOfDirectory(atPath: directory.url.appending(path: "inputs").path).isEmpty)
                await worker.setMemory(freeBytes: 350 * 1_000_000, bytesPerToken: 1_000_000)
                let accepted = try await client.post(
                    "/video/submit",
                    json: SubmitValidationTests.body(["num_frames": "24"], imageURL: "\(base)/image.png")
                )
                #expect(accepted.status == .accepted)
            }
        }
    }

    @Test func theSweeperRemovesOldOrphanFilesButNotLiveOnes() async throws {
        let directory = try TemporaryDirectory()
        let store = try SQLiteTaskStore(path: directory.url.appending(path: "tasks.sqlite").path)
        let inputs = directory.url.appending(path: "inputs"), videos = directory.url.appending(path: "videos")
        for folder in [inputs, videos] { try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true) }
        let live = inputs.appending(path: "live.png")
        var record = TaskStoreTests.record("live")
        record.inputKey = live.lastPathComponent
        try await store.enqueue(record, maxQueued: 10)
        let orphanVideo = videos.appending(path: "\(String(repeating: "c", count: 32)).mp4")
        let freshOrphan = videos.appending(path: "\(String(repeating: "d", count: 32)).mp4.tmp")
        for file in [live, orphanVideo, freshOrphan] { try Data("x".utf8).write(to: file) }
        let old = Date().addingTimeInterval(-3600)
        for file in [live, orphanVideo] { try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: file.path) }

        let sweeper = ResultSweeper(
            store: store,
            media: MediaStore(inputsDirectory: inputs, videosDirectory: videos),
            configuration: .init(videoTTL: .seconds(3600), taskRetention: .seconds(86400), interval: .seconds(60)),
            logger: .init(label: "test")
        )
        await sweeper.sweep()
        #expect(FileManager.default.fileExists(atPath: live.path), "a queued task's input is not an orphan")
        #expect(!FileManager.default.fileExists(atPath: orphanVideo.path), "an old file no task refers to is removed")
        #expect(FileManager.default.fileExists(atPath: freshOrphan.path), "a file being written right now is left alone")
    }
}
