import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// A node with several workers: where tasks go, and what one worker's trouble does (and does not do) to
/// the others. Jobs held after their last step stay running until the test lets them go, so what runs
/// where is checked while it runs, not guessed from timing.
@Suite struct WorkerPoolTests {
    @Test func tasksGoToTheLeastBusyWorkerAndBothRunAtOnce() async throws {
        let directory = try TemporaryDirectory()
        let workers = [FakeWorker(), FakeWorker()]
        for worker in workers { await worker.setHoldsAfterLastStep(true) }
        // A total of 3 over two workers: at most 2 on either.
        let app = try await makeApp(dataDir: directory.url, workers: workers, ["i2v.maxConcurrent": 3])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let a = try await client.submit(imageURL: "\(base)/image.png")
                try #require(await eventually("the first task running") { await workers[0].heldAfterLastStep == [a] })
                let b = try await client.submit(imageURL: "\(base)/image.png")
                try #require(await eventually("the second task running") { await workers[1].heldAfterLastStep == [b] })
                // Both busy with one: the tie goes to the first worker.
                let c = try await client.submit(imageURL: "\(base)/image.png")
                try #require(await eventually("the third task running") { await workers[0].heldAfterLastStep == [a, c] })
                #expect(await workers[0].started == [a, c])
                #expect(await workers[1].started == [b])
                let first = await workers[0].running, second = await workers[1].running
                #expect(first == [a, c] && second == [b], "both workers run at once")

                let ready = try await client.execute(uri: "/ready", method: .get)
                let listed = try #require(try ready.jsonObject()["workers"] as? [[String: Any]])
                #expect(listed.map { $0["running"] as? Int } == [2, 1])
                let metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                #expect(metrics.contains(#"i2v_worker_tasks_running{worker="0",device="cpu"} 2"#), "\(metrics)")
                #expect(metrics.contains(#"i2v_worker_tasks_running{worker="1",device="cpu"} 1"#), "\(metrics)")

                for worker in workers { await worker.releaseHeldJobs() }
                for id in [a, b, c] {
                    #expect(try await client.waitFor(id, status: "Succeed")["status"] as? String == "Succeed")
                }
                try #require(
                    await eventually("both workers idle in /ready") {
                        let body = try await client.execute(uri: "/ready", method: .get).jsonObject()
                        return (body["workers"] as? [[String: Any]])?.map { $0["running"] as? Int } == [0, 0]
                    })
            }
        }
    }

    @Test func aWorkerCrashRequeuesOnlyTheTaskItHeld() async throws {
        let directory = try TemporaryDirectory()
        let workers = [FakeWorker(), FakeWorker()]
        for worker in workers { await worker.setHoldsAfterLastStep(true) }
        let app = try await makeApp(dataDir: directory.url, workers: workers, ["i2v.maxAttempts": 2])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let a = try await client.submit(imageURL: "\(base)/image.png")
                try #require(await eventually("the first task running") { await workers[0].heldAfterLastStep == [a] })
                let b = try await client.submit(imageURL: "\(base)/image.png")
                try #require(await eventually("the second task running") { await workers[1].heldAfterLastStep == [b] })

                await workers[0].crash()
                // One slot each (the default total of one per worker), so the lost task comes back on its own
                // worker while the other still holds its job.
                try #require(
                    await eventually("the lost task running again") {
                        let started = await workers[0].started, held = await workers[0].heldAfterLastStep
                        return started == [a, a] && held == [a]
                    })
                #expect(await workers[1].running == [b])
                #expect(try await client.status(b)["status"] as? String == "InProgress")

                for worker in workers { await worker.releaseHeldJobs() }
                #expect(try await client.waitFor(a, status: "Succeed")["status"] as? String == "Succeed")
                #expect(try await client.waitFor(b, status: "Succeed")["status"] as? String == "Succeed")
                #expect(await workers[1].started == [b], "the other worker's job ran once")
                #expect(await workers[1].restarts.isEmpty)
            }
        }
    }

    @Test func aCancelAndItsRestartReachOnlyTheWorkerHoldingTheTask() async throws {
        let directory = try TemporaryDirectory()
        let workers = [FakeWorker(), FakeWorker()]
        // Held after its last step, the job no longer looks at cancels, so the cancel grace runs out and
        // the worker holding it is restarted.
        for worker in workers { await worker.setHoldsAfterLastStep(true) }
        let app = try await makeApp(dataDir: directory.url, workers: workers, ["i2v.cancelGraceSeconds": 0.5])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let a = try await client.submit(imageURL: "\(base)/image.png")
                try #require(await eventually("the first task running") { await workers[0].heldAfterLastStep == [a] })
                let b = try await client.submit(imageURL: "\(base)/image.png")
                try #require(await eventually("the second task running") { await workers[1].heldAfterLastStep == [b] })

                #expect(try await client.post("/video/cancel", json: #"{"requestId":"\#(b)"}"#).status == .ok)
                let cancelled = try await client.waitFor(b, status: "Cancelled")
                #expect(cancelled["status"] as? String == "Cancelled", "\(cancelled)")
                #expect(await workers[1].cancelled == [b])
                #expect(await workers[1].restarts.count == 1)
                #expect(await workers[0].cancelled.isEmpty)
                #expect(await workers[0].restarts.isEmpty)
                #expect(await workers[0].running == [a])

                await workers[0].releaseHeldJobs()
                #expect(try await client.waitFor(a, status: "Succeed")["status"] as? String == "Succeed")
            }
        }
    }

    @Test func readyListsEveryWorkerAndNeedsOnlyOneOfThem() async throws {
        let directory = try TemporaryDirectory()
        let workers = [FakeWorker(ready: false), FakeWorker(ready: true)]
        let app = try await makeApp(dataDir: directory.url, workers: workers, ["i2v.devices": "cuda:0,cuda:1"])
        try await withImageServer { base in
            try await app.test(.router) { client in
                let ready = try await client.execute(uri: "/ready", method: .get)
                #expect(ready.status == .ok)
                let body = try ready.jsonObject()
                #expect(body["status"] as? String == "ready")
                #expect(body["device"] as? String == "cuda:1")
                // Only the ready worker's share (1 of the node's 2) can run jobs now.
                #expect(body["slots"] as? Int == 1)
                let listed = try #require(body["workers"] as? [[String: Any]])
                #expect(listed.map { $0["index"] as? Int } == [0, 1])
                #expect(listed.map { $0["device"] as? String } == ["cuda:0", "cuda:1"])
                #expect(listed.map { $0["state"] as? String } == ["starting", "ready"])
                #expect(listed.map { $0["running"] as? Int } == [0, 0])
                #expect(listed.map { $0["restarts"] as? Int } == [0, 0])

                let metrics = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                for labels in [#"{worker="0",device="cuda:0"}"#, #"{worker="1",device="cuda:1"}"#] {
                    #expect(metrics.contains("i2v_worker_restarts_total\(labels) 0"), "\(metrics)")
                    #expect(metrics.contains("i2v_worker_tasks_running\(labels) 0"), "\(metrics)")
                }

                // Work goes to the worker that is ready.
                let id = try await client.submit(imageURL: "\(base)/image.png")
                #expect(try await client.waitFor(id, status: "Succeed")["status"] as? String == "Succeed")
                #expect(await workers[0].started.isEmpty)
                #expect(await workers[1].started == [id])

                await workers[1].setReady(false)
                let down = try await client.execute(uri: "/ready", method: .get)
                #expect(down.status == .serviceUnavailable)
                let reason = try #require(down.failureReason)
                #expect(reason.contains("worker 0 (cuda:0)") && reason.contains("worker 1 (cuda:1)"), "\(reason)")
            }
        }
    }

    @Test func theNodeTotalDefaultsToOnePerDeviceAndIsSpreadOverTheWorkers() async throws {
        #expect(WorkerPool.defaultCapacity(workers: 1) == 2)
        #expect(WorkerPool.defaultCapacity(workers: 3) == 3)
        #expect(WorkerPool.slotsPerWorker(total: 2, workers: 1) == 2)
        #expect(WorkerPool.slotsPerWorker(total: 3, workers: 2) == 2)
        #expect(WorkerPool.slotsPerWorker(total: 4, workers: 2) == 2)
        #expect(WorkerPool.slotsPerWorker(total: 1, workers: 2) == 1)

        let directory = try TemporaryDirectory()
        let app = try await makeApp(dataDir: directory.url, workers: [FakeWorker(), FakeWorker(), FakeWorker()])
        try await app.test(.router) { client in
            let body = try await client.execute(uri: "/ready", method: .get).jsonObject()
            #expect(body["slots"] as? Int == 3)
        }
    }

    @Test func devicesAreReadFromTheListOrTheSingleDevice() async throws {
        #expect(DeviceSelection(devices: nil, device: nil) == .auto)
        #expect(DeviceSelection(devices: "auto", device: "cpu") == .auto)
        #expect(DeviceSelection(devices: " cuda:0, cuda:1 ", device: nil) == .list(["cuda:0", "cuda:1"]))
        #expect(DeviceSelection(devices: "cpu,cpu", device: "cuda") == .list(["cpu", "cpu"]))
        #expect(DeviceSelection(devices: nil, device: "cuda:1") == .list(["cuda:1"]))
        #expect(DeviceSelection(devices: "", device: "") == .auto)

        let logger = Logger(label: "test")
        #expect(try await DeviceSelection.list(["cpu", "cuda", "cuda:3"]).resolve(logger: logger) == ["cpu", "cuda", "cuda:3"])
        await #expect(throws: ConfigurationProblem.self) { try await DeviceSelection.list(["gpu0"]).resolve(logger: logger) }
        await #expect(throws: ConfigurationProblem.self) { try await DeviceSelection.list(["cuda:-1"]).resolve(logger: logger) }

        let listing = """
            GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)
            GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-2)
              MIG 1g.10gb     Device  0: (UUID: MIG-3)
            """
        #expect(DeviceSelection.parseGPUList(listing) == [0, 1])
        #expect(DeviceSelection.parseGPUList("") == [])
    }

    /// `+` joins devices into a group that is one worker; `,` still separates workers, so older values keep
    /// their meaning.
    @Test func plusJoinsDevicesIntoAGroupThatIsOneWorker() async throws {
        let selection = DeviceSelection(devices: "cuda:0+cuda:1+cuda:2+cuda:3, cuda:4 + cuda:5,cpu", device: nil)
        #expect(selection == .list(["cuda:0+cuda:1+cuda:2+cuda:3", "cuda:4+cuda:5", "cpu"]))
        let logger = Logger(label: "test")
        #expect(try await selection.resolve(logger: logger).count == 3)
        #expect(try await DeviceSelection(devices: "cpu+cpu", device: nil).resolve(logger: logger) == ["cpu+cpu"])
        for bad in ["cuda:0+cuda:0", "cpu+cuda:1", "cuda:0+", "cuda+cuda", "cpu+gpu"] {
            await #expect(throws: ConfigurationProblem.self, "\(bad)") { try await DeviceSelection.list([bad]).resolve(logger: logger) }
        }
        // A group's worker sees only its GPUs, which CUDA numbers from 0.
        #expect(DeviceSelection.workerEnvironment(device: "cuda:4+cuda:5") == ["CUDA_VISIBLE_DEVICES": "4,5", "I2V_DEVICE": "cuda:0+cuda:1"])
        #expect(DeviceSelection.workerEnvironment(device: "cpu+cpu") == ["I2V_DEVICE": "cpu+cpu"])
        #expect(DeviceSelection.workerEnvironment(device: "cuda:2") == ["CUDA_VISIBLE_DEVICES": "2", "I2V_DEVICE": "cuda"])
    }

    @Test func eachWorkerIsPinnedToItsDeviceWithItsShareOfSlots() {
        let directory = URL(fileURLWithPath: "/tmp")
        let configuration = testConfiguration(dataDir: directory, ["i2v.devices": "cuda:0,cuda:1", "i2v.maxConcurrent": 3])
        let gpu = workerLaunch(configuration: configuration, checkpoint: "/models/x", device: "cuda:1", slots: 2).environment
        #expect(gpu["CUDA_VISIBLE_DEVICES"] == "1")
        #expect(gpu["I2V_DEVICE"] == "cuda")
        #expect(gpu["I2V_WORKER_SLOTS"] == "2")
        let cpu = workerLaunch(configuration: configuration, checkpoint: "/models/x", device: "cpu", slots: 1).environment
        #expect(cpu["CUDA_VISIBLE_DEVICES"] == nil)
        #expect(cpu["I2V_DEVICE"] == "cpu")
        #expect(cpu["I2V_WORKER_SLOTS"] == "1")
    }

    private func makeApp(dataDir: URL, workers: [FakeWorker], _ values: [String: ConfigValue] = [:]) async throws -> some ApplicationProtocol {
        try await buildApplication(
            configuration: testConfiguration(dataDir: dataDir, values),
            overrides: AppOverrides(workers: workers, catalog: ModelCatalog(models: [ServedModel(id: "test-model", nativeArea: 15_360)]))
        )
    }
}
