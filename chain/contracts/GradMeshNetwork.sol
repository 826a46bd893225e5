// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title GradMeshNetwork
/// @notice Staking, commit-reveal weight setting and reward settlement for the
///         gradmesh permissionless training network.
///
/// Design notes (the Python client and docs rely on these):
///  * Parameters are fixed at deployment and never change. There is no owner and
///    no admin function; the only rule for changing a parameter is "deploy a new
///    contract". Nobody can move staked funds, pooled emission or balances except
///    through the rules below.
///  * Time: window = (block.number - genesisBlock) / blocksPerWindow and
///    epoch = window / windowsPerEpoch. Validators commit during epoch e and reveal
///    during the first `revealWindows` windows of epoch e+1. Anyone may settle e
///    once the reveal phase is over.
///  * Miner slots: uids 0..maxMiners-1. Freed slots (unstaked/pruned) are reused
///    first. When every slot is taken, a newcomer replaces the occupied slot with
///    the lowest last-consensus weight among miners past their immunity period
///    (ties: older registration, then lower uid). The pruned miner keeps its stake,
///    which becomes withdrawable immediately.
///  * Validators are NOT pruned: they are simply capped at maxValidators (a full
///    set reverts with CapacityFull). Validator influence is stake weighted, so a
///    capped set cannot be captured cheaply by displacing incumbents.
///  * The run spec's sha256 is fixed at deployment (`runSpecHash`): the network
///    trains exactly one run, and nodes with another spec refuse to start.
///  * Contributions: a miner commits to its envelope's sha256 before releasing it
///    (`commitContribution`); the block it landed in is kept, and validators count
///    an envelope only when its signer's commitment preceded the run's release
///    point, which is a run-spec value, not a contract parameter.
///  * Settlement: revealed validators count with the stake they held at reveal
///    time. Per miner the consensus weight is the lower stake-weighted median of
///    the revealed weights (a missing weight counts as 0). Miners share the miner
///    part of the emission in proportion to consensus. A validator's weight for a
///    miner is clipped to the consensus; agreement = sum(clipped) / sum(consensus)
///    and validators share their part in proportion to stake * agreement.
///    All arithmetic is integer and every remainder is carried into the next
///    settlement, so payouts + newCarried == emission + previousCarried exactly.
///  * A slot only earns for an epoch if the same miner held it before that epoch
///    ended (a miner who registered into a recycled slot later does not inherit
///    the previous occupant's reward); rewards for empty or recycled slots are
///    carried.
///  * Arithmetic is checked (0.8 semantics). Products are bounded by
///    stake * 1e6 * emission, far below 2^256 for any real token supply.
contract GradMeshNetwork {
    // ------------------------------------------------------------------ types

    struct Params {
        uint64 blocksPerWindow;
        uint64 windowsPerEpoch;
        uint64 revealWindows;
        uint128 minStake;
        uint16 maxMiners;
        uint16 maxValidators;
        uint64 immunityWindows;
        uint64 unstakeCooldownWindows;
        uint128 emissionPerEpoch;
        uint16 validatorShareBps;
        uint16 aggregationSize;
    }

    struct Member {
        uint8 role; // 0 none, 1 miner, 2 validator
        bool active; // in the active set (false while waiting to withdraw)
        uint16 uid;
        uint64 registeredWindow;
        uint64 unlockWindow; // when inactive: first window stake can be withdrawn
        uint128 stake;
    }

    /// One storage word per miner slot.
    struct MinerSlot {
        address addr;
        uint64 registeredWindow;
        uint32 weight; // last settled consensus weight (0 for a fresh occupant)
    }

    /// A miner's commitment to the envelope it will publish in a window, and the block
    /// it landed in (validators count it only before the run's release point).
    struct Contribution {
        bytes32 digest;
        uint64 blockNumber;
    }

    struct Vote {
        bytes32 commitment;
        uint128 stake; // stake snapshot at reveal
        bool revealed;
    }

    // -------------------------------------------------------------- constants

    uint8 public constant ROLE_MINER = 1;
    uint8 public constant ROLE_VALIDATOR = 2;
    uint32 public constant WEIGHT_SCALE = 1_000_000;
    uint256 public constant MAX_PEER_ID_LENGTH = 64;
    uint16 private constant BPS = 10_000;

    // ------------------------------------------------------------- immutables

    uint64 private immutable _blocksPerWindow;
    uint64 private immutable _windowsPerEpoch;
    uint64 private immutable _revealWindows;
    uint128 private immutable _minStake;
    uint16 private immutable _maxMiners;
    uint16 private immutable _maxValidators;
    uint64 private immutable _immunityWindows;
    uint64 private immutable _unstakeCooldownWindows;
    uint128 private immutable _emissionPerEpoch;
    uint16 private immutable _validatorShareBps;
    uint16 private immutable _aggregationSize;
    uint64 private immutable _genesisBlock;
    /// sha256 of the run spec every node must train by (zero: none recorded)
    bytes32 private immutable _runSpecHash;

    // ------------------------------------------------------------------ state

    mapping(address => Member) private _members;
    mapping(address => bytes) private _peerIds;
    mapping(uint16 => MinerSlot) private _minerSlots;
    mapping(uint16 => address) private _validatorSlots;
    uint16[] private _freeMinerUids;
    uint16[] private _freeValidatorUids;
    uint16 private _minerHighWater; // slots ever handed out
    uint16 private _validatorHighWater;
    uint16 private _minerCount;
    uint16 private _validatorCount;

    mapping(uint64 => mapping(address => Contribution)) private _contributions;
    mapping(uint64 => mapping(address => Vote)) private _votes;
    mapping(uint64 => address[]) private _revealers;
    /// epoch => validator => word index => 8 packed uint32 weights (uid = 8*word + lane)
    mapping(uint64 => mapping(address => mapping(uint256 => uint256))) private _packedWeights;
    mapping(uint64 => bool) private _settled;

    bool private _hasConsensus;
    uint64 private _lastConsensusEpoch;

    mapping(address => uint256) private _balances;
    uint256 private _emissionPool;
    uint256 private _carried;

    uint256 private _lock = 1;

    // ----------------------------------------------------------------- errors

    error InvalidParams(string reason);
    error InvalidRole(uint8 role);
    error InvalidPeerId(uint256 length);
    error NotRegistered(address account);
    error AlreadyRegistered(address account);
    error NotActive(address account);
    error StillActive(address account);
    error StakeTooLow(uint256 sent, uint256 minStake);
    error ZeroValue();
    error StakeOverflow();
    error CapacityFull();
    error NotValidator(address account);
    error WrongPhase(uint64 epoch, uint64 currentWindow);
    error EmptyCommitment();
    error NotMiner(address account);
    error WrongWindow(uint64 window, uint64 currentWindow);
    error AlreadyCommitted(uint64 window);
    error NoCommitment();
    error AlreadyRevealed();
    error CommitMismatch();
    error LengthMismatch(uint256 uidsLength, uint256 weightsLength);
    error UidOutOfRange(uint16 uid);
    error DuplicateUid(uint16 uid);
    error WeightOutOfRange(uint16 uid, uint32 weight);
    error AlreadySettled(uint64 epoch);
    error CooldownActive(uint64 until);
    error NothingToClaim();
    error TransferFailed();
    error Reentrancy();

    // ----------------------------------------------------------------- events

    event Funded(address indexed from, uint256 amount, uint256 pool);
    event Registered(address indexed account, uint8 role, uint16 uid, uint256 stake, bytes peerId);
    event Pruned(address indexed account, uint16 uid);
    event StakeAdded(address indexed account, uint256 amount, uint256 stake);
    event UnstakeRequested(address indexed account, uint8 role, uint16 uid, uint64 unlockWindow);
    event StakeWithdrawn(address indexed account, uint256 amount);
    event ContributionCommitted(uint64 indexed window, address indexed miner, bytes32 digest);
    event WeightsCommitted(uint64 indexed epoch, address indexed validator, bytes32 commitment);
    event WeightsRevealed(uint64 indexed epoch, address indexed validator, uint256 count, uint256 stake);
    event Rewarded(uint64 indexed epoch, address indexed account, uint256 amount);
    event EpochSettled(
        uint64 indexed epoch, uint256 emission, uint256 minerTotal, uint256 validatorTotal, uint256 carried
    );
    event Claimed(address indexed account, uint256 amount);

    // -------------------------------------------------------------- modifiers

    modifier nonReentrant() {
        if (_lock != 1) revert Reentrancy();
        _lock = 2;
        _;
        _lock = 1;
    }

    // ------------------------------------------------------------ constructor

    constructor(Params memory p, bytes32 runSpec) payable {
        if (p.blocksPerWindow == 0) revert InvalidParams("blocksPerWindow");
        if (p.windowsPerEpoch == 0) revert InvalidParams("windowsPerEpoch");
        if (p.revealWindows == 0) revert InvalidParams("revealWindows");
        if (p.minStake == 0) revert InvalidParams("minStake");
        if (p.maxMiners == 0) revert InvalidParams("maxMiners");
        if (p.maxValidators == 0) revert InvalidParams("maxValidators");
        if (p.validatorShareBps > BPS) revert InvalidParams("validatorShareBps");
        if (p.aggregationSize == 0) revert InvalidParams("aggregationSize");
        _blocksPerWindow = p.blocksPerWindow;
        _windowsPerEpoch = p.windowsPerEpoch;
        _revealWindows = p.revealWindows;
        _minStake = p.minStake;
        _maxMiners = p.maxMiners;
        _maxValidators = p.maxValidators;
        _immunityWindows = p.immunityWindows;
        _unstakeCooldownWindows = p.unstakeCooldownWindows;
        _emissionPerEpoch = p.emissionPerEpoch;
        _validatorShareBps = p.validatorShareBps;
        _aggregationSize = p.aggregationSize;
        _genesisBlock = uint64(block.number);
        _runSpecHash = runSpec;
        if (msg.value > 0) {
            _emissionPool = msg.value;
            emit Funded(msg.sender, msg.value, msg.value);
        }
    }

    // ------------------------------------------------------------------ funds

    function fund() external payable {
        if (msg.value == 0) revert ZeroValue();
        _emissionPool += msg.value;
        emit Funded(msg.sender, msg.value, _emissionPool);
    }

    // ------------------------------------------------------------ membership

    function register(uint8 role, bytes calldata peerId) external payable returns (uint16 uid) {
        if (role != ROLE_MINER && role != ROLE_VALIDATOR) revert InvalidRole(role);
        if (peerId.length == 0 || peerId.length > MAX_PEER_ID_LENGTH) revert InvalidPeerId(peerId.length);
        if (msg.value < _minStake) revert StakeTooLow(msg.value, _minStake);
        if (msg.value > type(uint128).max) revert StakeOverflow();
        Member storage m = _members[msg.sender];
        if (m.role != 0) revert AlreadyRegistered(msg.sender);

        uint64 w = currentWindow();
        if (role == ROLE_MINER) {
            uid = _takeMinerSlot(w);
            _minerSlots[uid] = MinerSlot({addr: msg.sender, registeredWindow: w, weight: 0});
            _minerCount += 1;
        } else {
            uid = _takeValidatorSlot();
            _validatorSlots[uid] = msg.sender;
            _validatorCount += 1;
        }
        m.role = role;
        m.active = true;
        m.uid = uid;
        m.registeredWindow = w;
        m.unlockWindow = 0;
        m.stake = uint128(msg.value);
        _peerIds[msg.sender] = peerId;
        emit Registered(msg.sender, role, uid, msg.value, peerId);
    }

    function _takeMinerSlot(uint64 w) private returns (uint16 uid) {
        uint256 free = _freeMinerUids.length;
        if (free > 0) {
            uid = _freeMinerUids[free - 1];
            _freeMinerUids.pop();
            return uid;
        }
        if (_minerHighWater < _maxMiners) {
            uid = _minerHighWater;
            _minerHighWater = uid + 1;
            return uid;
        }
        // Full: prune the weakest miner that is past its immunity period.
        bool found;
        uint32 bestWeight;
        uint64 bestRegistered;
        for (uint16 i = 0; i < _maxMiners; ++i) {
            MinerSlot memory s = _minerSlots[i];
            if (uint256(s.registeredWindow) + _immunityWindows > w) continue;
            if (
                !found || s.weight < bestWeight
                    || (s.weight == bestWeight && s.registeredWindow < bestRegistered)
            ) {
                found = true;
                uid = i;
                bestWeight = s.weight;
                bestRegistered = s.registeredWindow;
            }
        }
        if (!found) revert CapacityFull();
        address pruned = _minerSlots[uid].addr;
        Member storage pm = _members[pruned];
        pm.active = false;
        pm.unlockWindow = w; // stake is not lost: withdrawable right away
        _minerCount -= 1;
        emit Pruned(pruned, uid);
    }

    function _takeValidatorSlot() private returns (uint16 uid) {
        uint256 free = _freeValidatorUids.length;
        if (free > 0) {
            uid = _freeValidatorUids[free - 1];
            _freeValidatorUids.pop();
            return uid;
        }
        if (_validatorHighWater >= _maxValidators) revert CapacityFull();
        uid = _validatorHighWater;
        _validatorHighWater = uid + 1;
    }

    function addStake() external payable {
        if (msg.value == 0) revert ZeroValue();
        Member storage m = _members[msg.sender];
        if (m.role == 0) revert NotRegistered(msg.sender);
        if (!m.active) revert NotActive(msg.sender);
        uint256 s = uint256(m.stake) + msg.value;
        if (s > type(uint128).max) revert StakeOverflow();
        m.stake = uint128(s);
        emit StakeAdded(msg.sender, msg.value, s);
    }

    function requestUnstake() external {
        Member storage m = _members[msg.sender];
        if (m.role == 0) revert NotRegistered(msg.sender);
        if (!m.active) revert NotActive(msg.sender);
        uint64 unlock = currentWindow() + _unstakeCooldownWindows;
        m.active = false;
        m.unlockWindow = unlock;
        if (m.role == ROLE_MINER) {
            delete _minerSlots[m.uid];
            _freeMinerUids.push(m.uid);
            _minerCount -= 1;
        } else {
            delete _validatorSlots[m.uid];
            _freeValidatorUids.push(m.uid);
            _validatorCount -= 1;
        }
        emit UnstakeRequested(msg.sender, m.role, m.uid, unlock);
    }

    function withdrawStake() external nonReentrant {
        Member storage m = _members[msg.sender];
        if (m.role == 0) revert NotRegistered(msg.sender);
        if (m.active) revert StillActive(msg.sender);
        if (currentWindow() < m.unlockWindow) revert CooldownActive(m.unlockWindow);
        uint256 amount = m.stake;
        delete _members[msg.sender];
        delete _peerIds[msg.sender];
        emit StakeWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ------------------------------------------------- contribution commitments

    /// Two-phase publication: before releasing its envelope a miner commits to the
    /// envelope's sha256 (which covers its own signature, so nobody can commit to a
    /// copy of bytes they have not seen). One commitment per miner per window; the
    /// block is kept so that every peer judges "before the release point" alike.
    function commitContribution(uint64 window, bytes32 digest) external {
        Member storage m = _members[msg.sender];
        if (m.role != ROLE_MINER || !m.active) revert NotMiner(msg.sender);
        uint64 w = currentWindow();
        if (window != w) revert WrongWindow(window, w);
        if (digest == bytes32(0)) revert EmptyCommitment();
        Contribution storage c = _contributions[w][msg.sender];
        if (c.digest != bytes32(0)) revert AlreadyCommitted(w);
        c.digest = digest;
        c.blockNumber = uint64(block.number);
        emit ContributionCommitted(w, msg.sender, digest);
    }

    /// Zero digest and block 0 when `miner` made no commitment in `window`.
    function contributionOf(uint64 window, address miner)
        external
        view
        returns (bytes32 digest, uint64 blockNumber)
    {
        Contribution storage c = _contributions[window][miner];
        return (c.digest, c.blockNumber);
    }

    // ---------------------------------------------------------- commit-reveal

    function commitWeights(uint64 epoch, bytes32 commitment) external {
        Member storage m = _members[msg.sender];
        if (m.role != ROLE_VALIDATOR || !m.active) revert NotValidator(msg.sender);
        uint64 w = currentWindow();
        if (epoch != w / _windowsPerEpoch) revert WrongPhase(epoch, w);
        if (commitment == bytes32(0)) revert EmptyCommitment();
        // Overwriting is allowed: a reveal is only possible in the next epoch.
        _votes[epoch][msg.sender].commitment = commitment;
        emit WeightsCommitted(epoch, msg.sender, commitment);
    }

    function revealWeights(uint64 epoch, uint16[] calldata uids, uint32[] calldata weights, bytes32 salt)
        external
    {
        Member storage m = _members[msg.sender];
        if (m.role != ROLE_VALIDATOR || !m.active) revert NotValidator(msg.sender);
        uint64 w = currentWindow();
        uint256 start = (uint256(epoch) + 1) * _windowsPerEpoch;
        if (w < start || w >= start + _revealWindows) revert WrongPhase(epoch, w);
        Vote storage v = _votes[epoch][msg.sender];
        if (v.commitment == bytes32(0)) revert NoCommitment();
        if (v.revealed) revert AlreadyRevealed();
        if (uids.length != weights.length) revert LengthMismatch(uids.length, weights.length);

        uint256 nWords = (uint256(_maxMiners) + 7) / 8;
        uint256[] memory packed = new uint256[](nWords);
        uint256[] memory seen = new uint256[]((uint256(_maxMiners) + 255) / 256);
        for (uint256 i = 0; i < uids.length; ++i) {
            uint16 uid = uids[i];
            uint32 wt = weights[i];
            if (uid >= _maxMiners) revert UidOutOfRange(uid);
            uint256 bit = uint256(1) << (uid & 255);
            if (seen[uid >> 8] & bit != 0) revert DuplicateUid(uid);
            seen[uid >> 8] |= bit;
            if (wt > WEIGHT_SCALE) revert WeightOutOfRange(uid, wt);
            packed[uid >> 3] |= uint256(wt) << ((uid & 7) * 32);
        }
        if (keccak256(abi.encode(msg.sender, epoch, uids, weights, salt)) != v.commitment) {
            revert CommitMismatch();
        }

        v.revealed = true;
        v.stake = m.stake;
        _revealers[epoch].push(msg.sender);
        mapping(uint256 => uint256) storage dst = _packedWeights[epoch][msg.sender];
        for (uint256 k = 0; k < nWords; ++k) {
            if (packed[k] != 0) dst[k] = packed[k];
        }
        emit WeightsRevealed(epoch, msg.sender, uids.length, m.stake);
    }

    // ------------------------------------------------------------- settlement

    function settle(uint64 epoch) external {
        if (_settled[epoch]) revert AlreadySettled(epoch);
        uint64 w = currentWindow();
        if (uint256(w) < (uint256(epoch) + 1) * _windowsPerEpoch + _revealWindows) {
            revert WrongPhase(epoch, w);
        }
        _settled[epoch] = true;

        uint256 emission = _emissionPool < _emissionPerEpoch ? _emissionPool : _emissionPerEpoch;
        _emissionPool -= emission;
        uint256 total = emission + _carried;

        address[] storage revealers = _revealers[epoch];
        if (revealers.length == 0) {
            _carried = total;
            emit EpochSettled(epoch, emission, 0, 0, total);
            return;
        }

        (uint256[] memory stakes, uint256[][] memory words, uint256 totalStake) = _loadVotes(epoch, revealers);
        (uint256[] memory consensus, uint256[] memory clipped, uint256 sumConsensus) =
            _consensus(words, stakes, totalStake, (uint256(epoch) + 1) * _windowsPerEpoch);

        if (sumConsensus == 0) {
            _carried = total;
            emit EpochSettled(epoch, emission, 0, 0, total);
            return;
        }

        bool updateConsensus = !_hasConsensus || epoch > _lastConsensusEpoch;
        if (updateConsensus) {
            _hasConsensus = true;
            _lastConsensusEpoch = epoch;
        }

        uint256 minerPool = total * (BPS - _validatorShareBps) / BPS;
        uint256 minerTotal = _payMiners(epoch, minerPool, consensus, sumConsensus, updateConsensus);
        uint256 validatorTotal = _payValidators(epoch, total - minerPool, revealers, stakes, clipped, sumConsensus);

        uint256 newCarried = total - minerTotal - validatorTotal;
        _carried = newCarried;
        emit EpochSettled(epoch, emission, minerTotal, validatorTotal, newCarried);
    }

    function _loadVotes(uint64 epoch, address[] storage revealers)
        private
        view
        returns (uint256[] memory stakes, uint256[][] memory words, uint256 totalStake)
    {
        uint256 nv = revealers.length;
        uint256 nWords = (uint256(_maxMiners) + 7) / 8;
        stakes = new uint256[](nv);
        words = new uint256[][](nv);
        for (uint256 v = 0; v < nv; ++v) {
            address a = revealers[v];
            stakes[v] = _votes[epoch][a].stake;
            totalStake += stakes[v];
            mapping(uint256 => uint256) storage src = _packedWeights[epoch][a];
            uint256[] memory row = new uint256[](nWords);
            for (uint256 k = 0; k < nWords; ++k) {
                row[k] = src[k];
            }
            words[v] = row;
        }
    }

    /// Per-miner lower stake-weighted median, and each validator's clipped sum.
    /// epochEnd = first window after the epoch; slots (re)assigned at or after it earn nothing.
    function _consensus(uint256[][] memory words, uint256[] memory stakes, uint256 totalStake, uint256 epochEnd)
        private
        view
        returns (uint256[] memory consensus, uint256[] memory clipped, uint256 sumConsensus)
    {
        uint256 nm = _maxMiners;
        uint256 nv = stakes.length;
        consensus = new uint256[](nm);
        clipped = new uint256[](nv);
        uint256[] memory col = new uint256[](nv);
        uint256[] memory vals = new uint256[](nv);
        uint256[] memory stk = new uint256[](nv);
        for (uint256 i = 0; i < nm; ++i) {
            if (!_earns(i, epochEnd)) continue;
            _column(words, i, col);
            uint256 c = _median(col, stakes, totalStake, vals, stk);
            if (c == 0) continue;
            consensus[i] = c;
            // unchecked: every term is at most WEIGHT_SCALE and there are < 2^32 terms
            unchecked {
                sumConsensus += c;
                for (uint256 v = 0; v < nv; ++v) {
                    uint256 x = col[v];
                    clipped[v] += x < c ? x : c;
                }
            }
        }
    }

    function _earns(uint256 uid, uint256 epochEnd) private view returns (bool) {
        MinerSlot memory s = _minerSlots[uint16(uid)];
        return s.addr != address(0) && s.registeredWindow < epochEnd;
    }

    function _column(uint256[][] memory words, uint256 uid, uint256[] memory col) private pure {
        uint256 shift = (uid & 7) * 32;
        uint256 word = uid >> 3;
        uint256 n = col.length;
        unchecked {
            for (uint256 v = 0; v < n; ++v) {
                col[v] = (words[v][word] >> shift) & 0xffffffff;
            }
        }
    }

    /// Lower stake-weighted median of `col` (weights) with `stakes`; vals/stk are scratch.
    function _median(
        uint256[] memory col,
        uint256[] memory stakes,
        uint256 totalStake,
        uint256[] memory vals,
        uint256[] memory stk
    ) private pure returns (uint256) {
        uint256 nv = col.length;
        // unchecked: indices stay below nv, and the stake sum is bounded by totalStake
        unchecked {
            // insertion sort by weight; the stake travels with its weight
            for (uint256 v = 0; v < nv; ++v) {
                uint256 x = col[v];
                uint256 sx = stakes[v];
                uint256 j = v;
                while (j > 0 && vals[j - 1] > x) {
                    vals[j] = vals[j - 1];
                    stk[j] = stk[j - 1];
                    --j;
                }
                vals[j] = x;
                stk[j] = sx;
            }
            uint256 cum;
            for (uint256 v = 0; v < nv; ++v) {
                cum += stk[v];
                if (cum * 2 >= totalStake) return vals[v];
            }
        }
        return 0; // unreachable: cumulative stake reaches totalStake
    }

    function _payMiners(
        uint64 epoch,
        uint256 minerPool,
        uint256[] memory consensus,
        uint256 sumConsensus,
        bool updateConsensus
    ) private returns (uint256 minerTotal) {
        uint256 nm = consensus.length;
        for (uint256 i = 0; i < nm; ++i) {
            uint256 c = consensus[i];
            MinerSlot storage slot = _minerSlots[uint16(i)];
            address a = slot.addr;
            if (updateConsensus && a != address(0)) slot.weight = uint32(c);
            if (c == 0) continue;
            uint256 pay = minerPool * c / sumConsensus;
            if (pay == 0) continue;
            _balances[a] += pay;
            minerTotal += pay;
            emit Rewarded(epoch, a, pay);
        }
    }

    /// agreement_v = clipped_v / sumConsensus, scaled by WEIGHT_SCALE (a ratio only:
    /// the money split stays exact because every remainder is carried).
    function _payValidators(
        uint64 epoch,
        uint256 validatorPool,
        address[] storage revealers,
        uint256[] memory stakes,
        uint256[] memory clipped,
        uint256 sumConsensus
    ) private returns (uint256 validatorTotal) {
        uint256 nv = stakes.length;
        uint256[] memory score = new uint256[](nv);
        uint256 totalScore;
        for (uint256 v = 0; v < nv; ++v) {
            score[v] = stakes[v] * (clipped[v] * WEIGHT_SCALE / sumConsensus);
            totalScore += score[v];
        }
        if (totalScore == 0) return 0;
        for (uint256 v = 0; v < nv; ++v) {
            uint256 pay = validatorPool * score[v] / totalScore;
            if (pay == 0) continue;
            address a = revealers[v];
            _balances[a] += pay;
            validatorTotal += pay;
            emit Rewarded(epoch, a, pay);
        }
    }

    // ----------------------------------------------------------------- claims

    function claim() external nonReentrant returns (uint256 amount) {
        amount = _balances[msg.sender];
        if (amount == 0) revert NothingToClaim();
        _balances[msg.sender] = 0;
        emit Claimed(msg.sender, amount);
        _send(msg.sender, amount);
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = payable(to).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    // ------------------------------------------------------------------ views

    function genesisBlock() external view returns (uint64) {
        return _genesisBlock;
    }

    /// The sha256 of the run spec (model, tokenizer, data, optimizer settings, seeds)
    /// recorded at deployment; nodes refuse to start with another. Zero: none recorded.
    function runSpecHash() external view returns (bytes32) {
        return _runSpecHash;
    }

    function currentWindow() public view returns (uint64) {
        return uint64((block.number - _genesisBlock) / _blocksPerWindow);
    }

    function currentEpoch() public view returns (uint64) {
        return currentWindow() / _windowsPerEpoch;
    }

    function getParams() external view returns (Params memory p) {
        p.blocksPerWindow = _blocksPerWindow;
        p.windowsPerEpoch = _windowsPerEpoch;
        p.revealWindows = _revealWindows;
        p.minStake = _minStake;
        p.maxMiners = _maxMiners;
        p.maxValidators = _maxValidators;
        p.immunityWindows = _immunityWindows;
        p.unstakeCooldownWindows = _unstakeCooldownWindows;
        p.emissionPerEpoch = _emissionPerEpoch;
        p.validatorShareBps = _validatorShareBps;
        p.aggregationSize = _aggregationSize;
    }

    function minerCount() external view returns (uint16) {
        return _minerCount;
    }

    function validatorCount() external view returns (uint16) {
        return _validatorCount;
    }

    /// Empty slot -> zero address, zero stake, empty peerId.
    function minerAt(uint16 uid)
        external
        view
        returns (address addr, uint128 stake, uint64 registeredWindow, bytes memory peerId)
    {
        if (uid >= _maxMiners) revert UidOutOfRange(uid);
        MinerSlot memory s = _minerSlots[uid];
        addr = s.addr;
        if (addr != address(0)) {
            stake = _members[addr].stake;
            registeredWindow = s.registeredWindow;
            peerId = _peerIds[addr];
        }
    }

    /// Empty slot -> zero address, zero stake, empty peerId.
    function validatorAt(uint16 uid)
        external
        view
        returns (address addr, uint128 stake, uint64 registeredWindow, bytes memory peerId)
    {
        if (uid >= _maxValidators) revert UidOutOfRange(uid);
        addr = _validatorSlots[uid];
        if (addr != address(0)) {
            Member storage m = _members[addr];
            stake = m.stake;
            registeredWindow = m.registeredWindow;
            peerId = _peerIds[addr];
        }
    }

    function roleOf(address a) external view returns (uint8 role, uint16 uid, uint128 stake, bool active) {
        Member storage m = _members[a];
        return (m.role, m.uid, m.stake, m.active);
    }

    /// First window in which an inactive member may call withdrawStake (0 while active).
    function unlockWindowOf(address a) external view returns (uint64) {
        Member storage m = _members[a];
        return m.active ? 0 : m.unlockWindow;
    }

    function peerIdOf(address a) external view returns (bytes memory) {
        return _peerIds[a];
    }

    /// Top aggregationSize occupied miner slots by last settled consensus weight,
    /// ties to the lower uid. Before any consensus all weights are 0, which yields
    /// the active miners in uid order. Zero-weight miners fill remaining places.
    function aggregationSet() external view returns (uint16[] memory uids, address[] memory addrs) {
        uint256 nm = _maxMiners;
        uint256 k = _aggregationSize < _minerCount ? _aggregationSize : _minerCount;
        uids = new uint16[](k);
        addrs = new address[](k);
        uint256[] memory weight = new uint256[](nm);
        bool[] memory take = new bool[](nm);
        for (uint256 i = 0; i < nm; ++i) {
            MinerSlot memory s = _minerSlots[uint16(i)];
            if (s.addr == address(0)) continue;
            weight[i] = s.weight;
            take[i] = true; // candidate
        }
        for (uint256 r = 0; r < k; ++r) {
            uint256 best = type(uint256).max;
            for (uint256 i = 0; i < nm; ++i) {
                if (!take[i]) continue;
                if (best == type(uint256).max || weight[i] > weight[best]) best = i;
            }
            take[best] = false;
            uids[r] = uint16(best);
            addrs[r] = _minerSlots[uint16(best)].addr;
        }
    }

    /// Weights of the newest settled epoch that produced a consensus, indexed by
    /// miner uid (length maxMiners); slots re-assigned since then read 0. Before any
    /// such settlement: (0, empty array).
    function lastConsensus() external view returns (uint64 epoch, uint32[] memory weights) {
        if (!_hasConsensus) return (0, new uint32[](0));
        epoch = _lastConsensusEpoch;
        uint256 nm = _maxMiners;
        weights = new uint32[](nm);
        for (uint256 i = 0; i < nm; ++i) {
            weights[i] = _minerSlots[uint16(i)].weight;
        }
    }

    function balanceOf(address a) external view returns (uint256) {
        return _balances[a];
    }

    function emissionPool() external view returns (uint256) {
        return _emissionPool;
    }

    function carried() external view returns (uint256) {
        return _carried;
    }

    function commitmentOf(uint64 epoch, address validator) external view returns (bytes32) {
        return _votes[epoch][validator].commitment;
    }

    function revealed(uint64 epoch, address validator) external view returns (bool) {
        return _votes[epoch][validator].revealed;
    }

    function revealerCount(uint64 epoch) external view returns (uint256) {
        return _revealers[epoch].length;
    }

    function settled(uint64 epoch) external view returns (bool) {
        return _settled[epoch];
    }
}
