import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VStorePostgres

/// The database going away for longer than a lease, with an API node and a worker node sharing it: the
/// jobs that finish meanwhile are recorded when it is back, no task fails for it, none runs twice, and no
/// input is deleted while an attempt may still need it.
@Suite(.serialized) struct OutageTests {
    @Test func jobsThatFinishDuringAnOutageLongerThanTheLeaseAreKept() async throws {
        try await withFreshPostgresDatabase { endpoint in
            let url = try TestCluster.url(database: endpoint.database)
            let directory = try TemporaryDirectory()
            // A lease much shorter than the outage; calls that give up fast, so the dispatcher keeps retrying.
            let settings: [String: ConfigValue] = [
                "i2v.databaseUrl": .init(stringLiteral: url),
                "i2v.leaseSeconds": 3,
                "i2v.databaseTimeoutSeconds": 2,
                "i2v.maxAttempts": 3,
            ]
            let api = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(), role: .api, settings.merging(["i2v.nodeId": "front-1"]) { $1 })
            // 20 steps of 300 ms: each job takes about 6 s, so both finish while the database is away.
            let fake = FakeWorker(stepDuration: .milliseconds(300))
            let worker = try await makeTestApp(dataDir: directory.url, worker: fake, role: .worker, settings.merging(["i2v.nodeId": "gpu-1"]) { $1 })
            try await withImageServer { base in
                try await api.test(.router) { client in
                    try await worker.test(.router) { _ in
                        let nodeUp = await eventually("the worker node registered") {
                            (try? await client.execute(uri: "/ready", method: .get).status) == .ok
                        }
                        try #require(nodeUp)
                        let ids = [
                            try await client.submit(imageURL: "\(base)/image.png"),
                            try await client.submit(imageURL: "\(base)/image.png"),
                        ]
                        for id in ids { _ = try await client.waitFor(id, status: "InProgress") }
                        let inputs = try FileManager.default.contentsOfDirectory(atPath: directory.url.appending(path: "inputs").path)
                        #expect(inputs.count == 2)

                        try await setConnections(allowed: false, endpoint)
                        // Past the jobs' end and well past the lease: every lease has run out by the clock.
                        try await Task.sleep(for: .seconds(12))
                        let finishedMeanwhile = await fake.running.isEmpty
                        try await setConnections(allowed: true, endpoint)
                        // The API node's pool reconnects on its own time; until then it answers 503, as it should.
                        let back = await eventually("the API node reaches the store again") {
                            (try? await client.execute(uri: "/ready", method: .get).status) == .ok
                        }
                        try #require(back)

                        for id in ids {
                            let body = try await client.waitFor(id, status: "Succeed", timeout: .seconds(300))
                            #expect(body["status"] as? String == "Succeed", "\(body)")
                        }
                        #expect(finishedMeanwhile, "the jobs were meant to finish during the outage")
                        // Made once each: the results finished during the outage were not thrown away and made again.
                        let started = await fake.started
                        for id in ids { #expect(started.filter { $0 == id }.count == 1, "\(id) started \(started.filter { $0 == id }.count) times") }
                        let records = try await withPostgresStore(endpoint) { store in
                            var records: [TaskRecord?] = []
                            for id in ids { records.append(try await store.task(id: id)) }
                            return records
                        }
                        for record in records {
                            #expect(record?.attempts == 1, "\(String(describing: record))")
                            #expect(record?.result != nil)
                        }
                    }
                }
            }
        }
    }
}
