#!/usr/bin/env escript
%%! -noshell
%% Build a signed Hex v2 repository (repository name "hexpm") for the benchmark, with the
%% hex_core modules bundled inside rebar3 (r3_hex_*). Deterministic for a given key.
%%
%% Usage: make_bench_repo.escript OUT_DIR PRIVATE_KEY_PEM PUBLIC_KEY_PEM
%%
%% Objects (sizes are what the benchmark is about; tarball contents are pseudo-random bytes, so
%% gzip cannot shrink them):
%%   packages/bench_small            ~1 KB registry record (several releases)
%%   tarballs/bench_small-1.0.0.tar  ~5 KB
%%   tarballs/bench_medium-1.0.0.tar ~84 KB
%%   tarballs/bench_large-1.0.0.tar  ~5 MB
%%   versions                        ~150 KB (thousands of packages, like hex.pm's)
%%   names, packages/bench_medium, packages/bench_large
%% With BENCH_RECORDS=N in the environment, also N more ~1 KB registry records
%% packages/bench_rec_01 .. bench_rec_N (listed in names; no tarballs), for bench/pressure.sh.
%% Prints one line per object: PATH SIZE SHA256.
-mode(compile).

-define(KB, 1024).

main([OutDir, PrivFile, PubFile]) ->
    load_hex_core(),
    rand:seed(exsss, {20, 24, 11}),
    {ok, Priv} = file:read_file(PrivFile),
    {ok, Pub} = file:read_file(PubFile),
    [ok = filelib:ensure_dir(filename:join([OutDir, D, "x"])) || D <- ["packages", "tarballs"]],
    Tar = fun(Name, Target) -> tarball(OutDir, Name, <<"1.0.0">>, Target) end,
    Small = Tar(<<"bench_small">>, 5 * ?KB),
    Medium = Tar(<<"bench_medium">>, 84 * ?KB),
    Large = Tar(<<"bench_large">>, 5 * ?KB * ?KB),
    %% bench_small: 1.0.0 is the real tarball; older releases only pad the record to ~1 KB
    SmallRecord = package_record(<<"bench_small">>, Small, 1000, Priv),
    write(OutDir, "packages/bench_small", SmallRecord),
    write(OutDir, "packages/bench_medium", package_record(<<"bench_medium">>, Medium, 0, Priv)),
    write(OutDir, "packages/bench_large", package_record(<<"bench_large">>, Large, 0, Priv)),
    Bench = [<<"bench_large">>, <<"bench_medium">>, <<"bench_small">>],
    Others = filler_names(150 * ?KB, Priv),
    AllNames = lists:usort(Bench ++ [N || {N, _} <- Others]),
    write(OutDir, "versions", versions(AllNames, Others, Priv)),
    Records = extra_records(OutDir, Priv),
    write(OutDir, "names", signed(r3_hex_registry:encode_names(
                                    #{repository => <<"hexpm">>,
                                      packages => [#{name => N} || N <- lists:usort(AllNames ++ Records)]}), Priv)),
    ok = file:write_file(filename:join(OutDir, "public_key"), Pub),
    self_check(OutDir, Pub),
    [begin
         {ok, B} = file:read_file(filename:join(OutDir, P)),
         io:format("~s ~p ~s~n", [P, byte_size(B), hex(crypto:hash(sha256, B))])
     end || P <- ["packages/bench_small", "tarballs/bench_small-1.0.0.tar",
                  "tarballs/bench_medium-1.0.0.tar", "versions", "tarballs/bench_large-1.0.0.tar",
                  "names", "packages/bench_medium", "packages/bench_large"]
                 ++ [<<"packages/", N/binary>> || N <- Records]],
    ok;
main(_) ->
    io:format(standard_error, "usage: make_bench_repo.escript OUT_DIR PRIVATE_KEY_PEM PUBLIC_KEY_PEM~n", []),
    halt(2).

%% A tarball whose size is close to Target: one file of pseudo-random bytes, resized until the
%% tar (which rounds members to 512-byte blocks) lands within a block of the target.
tarball(OutDir, Name, Vsn, Target) ->
    Build = fun(PayloadSize) ->
                    Meta = #{<<"name">> => Name, <<"version">> => Vsn, <<"app">> => Name,
                             <<"description">> => <<"benchmark package">>,
                             <<"licenses">> => [<<"Apache-2.0">>], <<"links">> => #{},
                             <<"requirements">> => #{}, <<"build_tools">> => [<<"rebar3">>],
                             <<"files">> => [<<"priv/blob.bin">>]},
                    rand:seed(exsss, {erlang:phash2(Name), 1, 2}),
                    Blob = rand:bytes(PayloadSize),
                    {ok, R} = r3_hex_tarball:create(Meta, [{"priv/blob.bin", Blob}]),
                    R
            end,
    Fit = fun Fit(Size, 0) -> Build(Size);
              Fit(Size, N) ->
                  #{tarball := T} = R = Build(Size),
                  Diff = Target - byte_size(T),
                  if abs(Diff) =< 512 -> R;
                     true -> Fit(max(1, Size + Diff), N - 1)
                  end
          end,
    #{tarball := T, inner_checksum := Inner, outer_checksum := Outer} = Fit(max(1, Target - 4096), 6),
    ok = file:write_file(filename:join([OutDir, "tarballs", <<Name/binary, "-", Vsn/binary, ".tar">>]), T),
    #{version => Vsn, inner_checksum => Inner, outer_checksum => Outer, dependencies => []}.

%% A signed /packages/NAME record; filler releases (no tarball) are added until it is MinSize.
package_record(Name, Release, MinSize, Priv) ->
    Grow = fun Grow(Extra) ->
                   Fillers = [#{version => iolist_to_binary(io_lib:format("0.~p.0", [I])),
                                inner_checksum => crypto:hash(sha256, [Name, integer_to_list(I)]),
                                outer_checksum => crypto:hash(sha256, [Name, "o", integer_to_list(I)]),
                                dependencies => []} || I <- lists:seq(1, Extra)],
                   Rec = signed(r3_hex_registry:encode_package(
                                  #{repository => <<"hexpm">>, name => Name,
                                    releases => Fillers ++ [Release]}), Priv),
                   if byte_size(Rec) >= MinSize -> Rec;
                      true -> Grow(Extra + 1)
                   end
           end,
    Grow(0).

%% BENCH_RECORDS=N: N signed records of one release each (checksums of no real tarball),
%% padded like bench_small's to ~1 KB. Returns their names.
extra_records(OutDir, Priv) ->
    N = case os:getenv("BENCH_RECORDS") of
            false -> 0;
            Text -> list_to_integer(Text)
        end,
    [begin
         Name = iolist_to_binary(io_lib:format("bench_rec_~2..0b", [I])),
         Release = #{version => <<"1.0.0">>, inner_checksum => crypto:hash(sha256, [Name, "i"]),
                     outer_checksum => crypto:hash(sha256, [Name, "o"]), dependencies => []},
         write(OutDir, <<"packages/", Name/binary>>, package_record(Name, Release, 1000, Priv)),
         Name
     end || I <- lists:seq(1, N)].

%% Enough packages (name, versions) that the gzipped, signed /versions is about Target bytes.
filler_names(Target, Priv) ->
    Make = fun(N) ->
                   rand:seed(exsss, {7, 7, 7}),
                   [{iolist_to_binary([lists:nth(rand:uniform(26), lists:seq($a, $z)) || _ <- lists:seq(1, 4 + rand:uniform(10))]
                                      ++ ["_", integer_to_list(I)]),
                     [iolist_to_binary(io_lib:format("~p.~p.~p", [rand:uniform(3) - 1, rand:uniform(20) - 1, rand:uniform(10) - 1]))
                      || _ <- lists:seq(1, 1 + rand:uniform(6))]}
                    || I <- lists:seq(1, N)]
           end,
    Size = fun(Pkgs) -> byte_size(versions([N || {N, _} <- Pkgs], Pkgs, Priv)) end,
    N1 = 4000,
    S1 = Size(Make(N1)),
    N2 = N1 * Target div S1,
    Make(N2).

versions(AllNames, Others, Priv) ->
    Vs = maps:from_list(Others),
    signed(r3_hex_registry:encode_versions(
             #{repository => <<"hexpm">>,
               packages => [#{name => N, versions => lists:usort(maps:get(N, Vs, [<<"1.0.0">>])),
                              retired => []} || N <- AllNames]}), Priv).

signed(Payload, Priv) -> zlib:gzip(r3_hex_registry:sign_protobuf(Payload, Priv)).

write(OutDir, Path, Bin) -> ok = file:write_file(filename:join(OutDir, Path), Bin).

%% Read everything back through the decoders the clients use.
self_check(OutDir, Pub) ->
    Read = fun(P) ->
                   {ok, Gz} = file:read_file(filename:join(OutDir, P)),
                   {ok, Payload} = r3_hex_registry:decode_and_verify_signed(zlib:gunzip(Gz), Pub),
                   Payload
           end,
    {ok, _} = r3_hex_registry:decode_names(Read("names"), <<"hexpm">>),
    {ok, _} = r3_hex_registry:decode_versions(Read("versions"), <<"hexpm">>),
    [begin
         {ok, Releases} = r3_hex_registry:decode_package(Read(<<"packages/", N/binary>>), <<"hexpm">>, N),
         [#{outer_checksum := OC}] = [R || R = #{version := <<"1.0.0">>} <- Releases],
         {ok, Tar} = file:read_file(filename:join(OutDir, <<"tarballs/", N/binary, "-1.0.0.tar">>)),
         {ok, #{outer_checksum := OC}} = r3_hex_tarball:unpack(Tar, memory)
     end || N <- [<<"bench_small">>, <<"bench_medium">>, <<"bench_large">>]],
    ok.

hex(Bin) -> [io_lib:format("~2.16.0b", [B]) || <<B>> <= Bin].

load_hex_core() ->
    Rebar3 = case os:getenv("REBAR3") of
                 false -> os:find_executable("rebar3");
                 P -> P
             end,
    Rebar3 =/= false orelse abort("rebar3 not found in PATH"),
    {ok, Sections} = escript:extract(Rebar3, []),
    {ok, Files} = zip:extract(proplists:get_value(archive, Sections), [memory]),
    [{module, _} = code:load_binary(list_to_atom(filename:basename(F, ".beam")), F, B)
     || {F, B} <- Files,
        filename:extension(F) =:= ".beam",
        lists:prefix("r3_hex_", filename:basename(F)) orelse
            lists:prefix("r3_safe_", filename:basename(F))],
    ok.

abort(Msg) -> io:format(standard_error, "make_bench_repo: ~s~n", [Msg]), halt(1).
