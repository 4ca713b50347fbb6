import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import ImageIntake
import Logging
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// The store is the truth: stopping the app mid-queue and starting it again on the same SQLite file
/// finishes every task.
@Suite struct RestartTests {
    @Test func stopMidQueueThenEverythingFinishesAfterRestart() async throws {
        let directory = try TemporaryDirectory()
        let ids = try await withImageServer { base in
            // Slow enough (20 steps of a second) that the first task is still running when the app has
            // shut down, however long a busy machine takes to get there.
            let slow = FakeWorker(stepDuration: .seconds(1))
            let first = try await makeTestApp(dataDir: directory.url, worker: slow, ["i2v.maxConcurrent": 1, "i2v.shutdownGraceSeconds": 0])
            let ids = try await first.test(.router) { client in
                var ids: [String] = []
                for _ in 0..<4 { ids.append(try await client.submit(imageURL: "\(base)/image.png")) }
                _ = try await client.waitFor(ids[0], status: "InProgress")
                return ids
            }
            // The app has stopped (its services shut down gracefully) with one task running, three queued.
            let fast = FakeWorker(stepDuration: .milliseconds(1))
            let second = try await makeTestApp(dataDir: directory.url, worker: fast, ["i2v.maxConcurrent": 2])
            try await second.test(.router) { client in
                for id in ids {
                    let status = try await client.waitFor(id, status: "Succeed")
                    #expect(status["status"] as? String == "Succeed", "\(id): \(status)")
                }
            }
            #expect(Set(await fast.started) == Set(ids))
            return ids
        }
        #expect(ids.count == 4)
    }
}
