import Foundation
import Hummingbird
import HummingbirdTesting
import I2VTestSupport
import Logging
import Metrics
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode

/// A worker's running jobs share its adapters, so the dispatcher keeps a busy worker to the LoRA set it runs
/// and lets it switch sets only when idle, but never for longer than `I2V_LORA_SET_HOLD_SECONDS`.
@Suite struct LoRASetDispatchTests {
    static let model = "wan2.1-i2v-14b-480p-demo"

    static func withService(
        _ worker: FakeWorker, hold: Double,
        _ body: @Sendable (_ client: any TestClientProtocol, _ base: String) async throws -> Void
    ) async throws {
        let directory = try TemporaryDirectory()
        let loras = try LoRAFiles.catalog(in: directory.url, [("style", LoRAFiles.lora()), ("soft", LoRAFiles.lora(rank: 2))])
        let app = try await makeTestApp(
            dataDir: directory.url, worker: worker, model: model,
            ["i2v.loraDir": .init(stringLiteral: loras.path), "i2v.loraSetHoldSeconds": .init(floatLiteral: hold)]
        )
        try await withImageServer { base in
            try await app.test(.router) { client in try await body(client, base) }
        }
    }

    static func submit(_ client: some TestClientProtocol, _ base: String, _ lora: String) async throws -> String {
        try await client.submit(imageURL: "\(base)/image.png", extra: #","infer_steps":20,"loras":[{"name":"\#(lora)"}]"#)
    }

    /// Two sets submitted alternately to one worker of two slots: it runs two jobs at once, always of one
    /// set, and every task finishes. With no hold the same queue mixes sets on the worker, so it is the
    /// dispatcher that keeps them apart.
    @Test(arguments: [(hold: 60.0, mixes: false), (hold: 0.0, mixes: true)])
    func alternatingSetsNeverShareTheWorker(_ setting: (hold: Double, mixes: Bool)) async throws {
        let worker = FakeWorker(stepDuration: .milliseconds(20), ready: false)
        try await Self.withService(worker, hold: setting.hold) { client, base in
            var ids: [String] = []
            for index in 0..<6 { ids.append(try await Self.submit(client, base, index % 2 == 0 ? "style" : "soft")) }
            await worker.setReady(true)
            for id in ids { #expect(try await client.waitFor(id, status: "Succeed")["status"] as? String == "Succeed") }
            #expect(await worker.maxConcurrent == 2)
            #expect(await worker.maxConcurrentLoRASets == (setting.mixes ? 2 : 1))
        }
    }

    /// A set queued behind a busy worker's is taken once the worker has kept to its set for the hold, not
    /// only when the worker falls idle.
    @Test func anOlderSetIsTakenOnceTheHoldHasPassed() async throws {
        let worker = FakeWorker(stepDuration: .milliseconds(30))
        try await Self.withService(worker, hold: 0.3) { client, base in
            let first = try await Self.submit(client, base, "style")
            _ = await eventually("the first job running") { await worker.started.contains(first) }
            let older = try await Self.submit(client, base, "soft")
            var styles: [String] = []
            for _ in 0..<8 { styles.append(try await Self.submit(client, base, "style")) }
            for id in [first, older] + styles { _ = try await client.waitFor(id, status: "Succeed") }
            let started = await worker.started
            let soft = try #require(started.firstIndex(of: older))
            let lastStyle = try #require(styles.compactMap { started.firstIndex(of: $0) }.max())
            #expect(soft < lastStyle, "the soft task waited for every style task: \(started)")
            #expect(await worker.maxConcurrentLoRASets == 2, "the switch happened while the worker was busy")
        }
    }
}

/// The pool's rule for which set a reserved slot claims, step by step on one worker's clock.
@Suite struct LoRASetHoldTests {
    @Test func aBusyWorkerKeepsToItsSetForTheHoldAndAnIdleOneTakesAny() async throws {
        let pool = WorkerPool(
            members: [.init(index: 0, device: "cpu", worker: FakeWorker(), slots: 2)], capacity: 2,
            metrics: ServiceMetrics(factory: NOOPMetricsHandler.instance)
        )
        let member = try #require(await pool.reserve())
        let start = ContinuousClock.now
        #expect(await pool.claimSet(for: member, hold: .seconds(10), now: start) == nil, "idle: the oldest task of any set")
        await pool.assign("a", loraSet: "x@1.0", to: member, now: start)
        #expect(await pool.claimSet(for: member, hold: .seconds(10), now: start + .seconds(9)) == "x@1.0")
        #expect(await pool.claimSet(for: member, hold: .seconds(10), now: start + .seconds(10)) == nil, "held long enough")
        // Past the hold a task of another set is taken; the worker now keeps to that one, from then.
        await pool.assign("b", loraSet: "", to: member, now: start + .seconds(11))
        #expect(await pool.claimSet(for: member, hold: .seconds(10), now: start + .seconds(20)) == "")
        await pool.release(member, taskID: "a")
        await pool.release(member, taskID: "b")
        #expect(await pool.claimSet(for: member, hold: .seconds(10), now: start + .seconds(12)) == nil, "idle again")
    }
}

/// A group (several devices making one video) takes no LoRAs. On a node with a plain worker beside it, the
/// LoRA tasks go to that worker and the group takes the others; on a node of groups alone the group still
/// claims them (and refuses them), so they never wait for a worker that does not exist.
@Suite struct GroupLoRADispatchTests {
    static func member(_ index: Int, _ device: String, _ worker: FakeWorker) -> WorkerPool.Member {
        .init(index: index, device: device, worker: worker, slots: 1)
    }

    @Test func aGroupClaimsOnlyTasksWithoutLoRAsWhenAPlainWorkerIsBesideIt() async throws {
        let metrics = ServiceMetrics(factory: NOOPMetricsHandler.instance)
        let mixed = WorkerPool(
            members: [Self.member(0, "cpu+cpu", FakeWorker()), Self.member(1, "cpu", FakeWorker())], capacity: 2, metrics: metrics
        )
        #expect(await mixed.claimSet(for: mixed.members[0], hold: .seconds(60)) == "", "the group: tasks without LoRAs only")
        #expect(await mixed.claimSet(for: mixed.members[1], hold: .seconds(60)) == nil, "the plain worker: any task")
        let groups = WorkerPool(members: [Self.member(0, "cpu+cpu", FakeWorker())], capacity: 1, metrics: metrics)
        #expect(await groups.claimSet(for: groups.members[0], hold: .seconds(60)) == nil, "groups alone: any task")
    }

    /// Through the dispatcher: tasks with and without LoRAs alternate in the queue, the group is the worker
    /// the pool offers first, and yet every LoRA task runs on the plain worker and every task runs.
    @Test func theDispatcherSendsLoRATasksPastTheGroup() async throws {
        let directory = try TemporaryDirectory()
        let catalog = try LoRAFiles.catalog(in: directory.url, named: "loras", [("style", LoRAFiles.lora())])
        let loras = LoRADirectory(directory: catalog, logger: Logger(label: "test"))
        let style = try #require(await loras.entry(named: "style"))
        let media = MediaStore(inputsDirectory: directory.url.appending(path: "inputs"), videosDirectory: directory.url.appending(path: "videos"))
        let queue = InMemoryTaskQueue()
        let group = FakeWorker(stepDuration: .milliseconds(2))
        let plain = FakeWorker(stepDuration: .milliseconds(2))
        let metrics = ServiceMetrics(factory: NOOPMetricsHandler.instance)
        let pool = WorkerPool(members: [Self.member(0, "cpu+cpu", group), Self.member(1, "cpu", plain)], capacity: 2, metrics: metrics)
        var withLoRAs: Set<String> = []
        var all: [String] = []
        for index in 0..<6 {
            var record = TaskStoreTests.record("task\(index)", model: "test-model")
            if index % 2 == 0 {
                record.loras = [TaskLoRA(name: "style", scale: 1, sha256: style.sha256)]
                withLoRAs.insert(record.id)
            }
            try await queue.enqueue(record, maxQueued: 10)
            all.append(record.id)
        }
        let signal = DispatchSignal()
        let dispatcher = Dispatcher(
            store: queue, media: media, loras: loras, pool: pool, signal: signal,
            configuration: .init(node: "node", lease: .seconds(30), maxAttempts: 3, cancelGrace: .seconds(5), shutdownGrace: .seconds(5)),
            metrics: metrics, logger: Logger(label: "test")
        )
        let running = Task { try await dispatcher.run() }
        defer { running.cancel() }
        let done = await eventually("every task run", timeout: .seconds(120)) {
            Set(await group.started).union(await plain.started) == Set(all)
        }
        let byGroup = await group.started
        let byPlain = await plain.started
        #expect(done, "group ran \(byGroup), plain ran \(byPlain)")
        #expect(Set(byGroup).isDisjoint(with: withLoRAs), "the group ran a LoRA task: \(byGroup)")
        #expect(withLoRAs.isSubset(of: Set(byPlain)))
        #expect(!byGroup.isEmpty, "the group took none of the tasks without LoRAs")
    }
}
