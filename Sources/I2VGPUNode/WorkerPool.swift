import I2VCore

/// The node's inference workers, one per device, and how many jobs each is running. The dispatcher reserves
/// a slot on a worker for each task it claims and gives it back when the task ends; `/ready` and `/metrics`
/// read the same counts, which is why they live here rather than in the dispatcher.
public actor WorkerPool {
    public struct Member: Sendable {
        public let index: Int
        /// The device as configured (`cuda:1`, `cpu`): a worker pinned with `CUDA_VISIBLE_DEVICES` calls
        /// its GPU `cuda:0` whatever it is, so the worker's own report cannot tell the workers apart.
        public let device: String
        public let worker: any InferenceWorker
        /// The most jobs it runs at once.
        public let slots: Int
        /// Several devices making one video (`cuda:0+cuda:1`). A group takes no LoRAs: its ranks would
        /// have to switch adapters in step.
        public var isGroup: Bool { device.contains("+") }

        public init(index: Int, device: String, worker: any InferenceWorker, slots: Int) {
            self.index = index
            self.device = device
            self.worker = worker
            self.slots = slots
        }
    }

    public struct Snapshot: Sendable, Equatable {
        public var index: Int
        public var device: String
        public var status: WorkerStatus
        public var running: Int
        /// The tasks it is running now.
        public var tasks: [String]
        public var ready: WorkerReady?

        /// A group of devices, as configured (`Member.isGroup`) or as the worker says (`ranks`): it takes no
        /// LoRAs.
        public var isGroup: Bool { device.contains("+") || (ready?.ranks ?? 1) > 1 }

        /// What it serves once ready, as the node announces it.
        package var served: ServedModel? { ready.map { ServedModel($0.model, takesLoRAs: !isGroup) } }

        package init(index: Int, device: String, status: WorkerStatus, running: Int, tasks: [String], ready: WorkerReady? = nil) {
            self.index = index
            self.device = device
            self.status = status
            self.running = running
            self.tasks = tasks
            self.ready = ready
        }
    }

    public nonisolated let members: [Member]
    /// The most jobs the node runs at once, over all its workers.
    public nonisolated let capacity: Int
    private let metrics: ServiceMetrics
    private var running: [Int]
    private var tasks: [[String]]
    /// Each busy worker's LoRA set and since when it has run it (see `claimSet`).
    private var heldSets: [(set: String, since: ContinuousClock.Instant)?]

    public init(members: [Member], capacity: Int, metrics: ServiceMetrics) {
        precondition(!members.isEmpty, "a node needs at least one worker")
        self.members = members
        self.capacity = capacity
        self.metrics = metrics
        self.running = Array(repeating: 0, count: members.count)
        self.tasks = Array(repeating: [], count: members.count)
        self.heldSets = Array(repeating: nil, count: members.count)
        // Every worker shows up in /metrics from the start, not only once it has run or lost something.
        for member in members { metrics.registerWorker(index: member.index, device: member.device) }
    }

    /// The node's total when `I2V_MAX_CONCURRENT` is not set: one device runs two jobs on its one loaded
    /// pipeline, as a single-GPU node always has; several run one each.
    public static func defaultCapacity(workers: Int) -> Int {
        workers == 1 ? 2 : workers
    }

    /// Each worker's share of the node's total. Rounded up rather than split exactly, so that while one
    /// worker is restarting the others can take up its share of the total.
    public static func slotsPerWorker(total: Int, workers: Int) -> Int {
        max(1, (total + workers - 1) / workers)
    }

    /// The jobs the ready workers can run at once now: each worker's share, capped by what it said it runs at
    /// once (a group runs one job at a time), never more than the node's total.
    package func readySlots() async -> Int {
        var total = 0
        for member in members {
            if let reported = await member.worker.readiness()?.slots { total += min(member.slots, reported) }
        }
        return min(capacity, total)
    }

    /// Reserves a slot on the least busy ready worker with one free (ties go to the lowest index), leaving out
    /// the workers in `passed`; nil when the node is at its total or no other ready worker has room.
    package func reserve(passing passed: Set<Int> = []) async -> Member? {
        guard running.reduce(0, +) < capacity else { return nil }
        var reported: [Int?] = []
        for member in members { reported.append(await member.worker.readiness()?.slots) }
        // No suspension from here on: the choice and the reservation see the same counts.
        var chosen: Member?
        for member in members where !passed.contains(member.index) {
            guard let workerSlots = reported[member.index] else { continue }
            let busy = running[member.index]
            guard busy < min(member.slots, workerSlots) else { continue }
            if let best = chosen, running[best.index] <= busy { continue }
            chosen = member
        }
        guard let chosen else { return nil }
        running[chosen.index] += 1
        return chosen
    }

    /// The LoRA set a busy worker's free slot should claim, or nil for the oldest task of any set. A
    /// worker's running jobs share its adapters, so a job of another set would wait inside the worker until
    /// they end; keeping a busy worker to its set lets it switch sets only when idle. After `hold` of one set
    /// it takes the oldest task again (which may be of its set still), so no set waits longer than that
    /// behind a worker that is never idle.
    ///
    /// A group claims only tasks without LoRAs while the node has a worker that is not a group, or another
    /// live node takes LoRAs for its models (`loRAsElsewhere`): LoRA tasks are left to those. Otherwise a
    /// group claims them too, and refuses them, so they fail with the reason rather than wait for a worker
    /// that never comes (submits refuse them already; these were queued before).
    package func claimSet(for member: Member, hold: Duration, loRAsElsewhere: Bool = false, now: ContinuousClock.Instant = .now) -> String? {
        if member.isGroup, loRAsElsewhere || members.contains(where: { !$0.isGroup }) { return "" }
        guard !tasks[member.index].isEmpty, let held = heldSets[member.index], now - held.since < hold else { return nil }
        return held.set
    }

    /// Records which task a reserved slot is running. The gauge counts tasks, not reservations: a slot
    /// reserved for a claim that finds the queue empty never ran anything.
    package func assign(_ taskID: String, loraSet: String = "", to member: Member, now: ContinuousClock.Instant = .now) {
        if tasks[member.index].isEmpty || heldSets[member.index]?.set != loraSet {
            heldSets[member.index] = (loraSet, now)
        }
        tasks[member.index].append(taskID)
        metrics.recordWorkerRunning(index: member.index, device: member.device, count: tasks[member.index].count)
    }

    /// Gives back a reserved slot, and forgets its task if one was assigned.
    package func release(_ member: Member, taskID: String? = nil) {
        if let taskID { tasks[member.index].removeAll { $0 == taskID } }
        if tasks[member.index].isEmpty { heldSets[member.index] = nil }
        running[member.index] = max(0, running[member.index] - 1)
        metrics.recordWorkerRunning(index: member.index, device: member.device, count: tasks[member.index].count)
    }

    package func runningCounts() -> [Int] { running }

    /// The tasks a worker is running now.
    package func tasks(of member: Member) -> [String] { tasks[member.index] }

    public func snapshot() async -> [Snapshot] {
        var snapshots: [Snapshot] = []
        for member in members {
            let status = await member.worker.status()
            let ready = await member.worker.readiness()
            snapshots.append(
                Snapshot(
                    index: member.index,
                    device: member.device,
                    status: status,
                    running: running[member.index],
                    tasks: tasks[member.index],
                    ready: ready
                ))
        }
        return snapshots
    }

    /// The most free device memory any ready worker reported. A submit is refused only when it cannot fit
    /// on any of them: the dispatcher does not place jobs by memory, but a job that fits nowhere will fail
    /// wherever it goes.
    public nonisolated func largestFreeMemory() async -> WorkerMemory? {
        var best: WorkerMemory?
        for member in members {
            guard let memory = await member.worker.readiness()?.memory else { continue }
            guard let candidate = memory.freeBytes else { return memory }
            if let current = best?.freeBytes, current >= candidate { continue }
            best = memory
        }
        return best
    }
}
