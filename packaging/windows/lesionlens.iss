; LesionLens - Inno Setup 6 script for the Windows installer (per user, no administrator rights).
;
; Not built or tested by this project's CI (it runs on Linux). Build on Windows, after the
; one-folder build dist\<flavour>\LesionLens\ (see docs/packaging.md, "Windows"):
;
;   iscc /DAppVersion=0.1.0 /DFlavour=gpu packaging\windows\lesionlens.iss
;
; Output: dist\LesionLens-<version>-windows-<flavour>-setup.exe. It installs into
; %LOCALAPPDATA%\Programs\LesionLens, adds a Start menu entry (and, if ticked, a desktop
; shortcut), registers an uninstaller under Settings > Apps, runs the installed app's self-test, and
; on upgrade removes the previous version's files first so none of them survives. The user's
; settings (registry HKCU\Software\LesionLens) and reports are never touched, also not on uninstall.

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#ifndef Flavour
  #define Flavour "gpu"
#endif
#define AppName "LesionLens"
#define SourceDir "..\..\dist\" + Flavour + "\LesionLens"

[Setup]
; The AppId identifies LesionLens to Windows across versions: never change it.
AppId={{0F736CE9-CC17-4552-AE9B-18EA3A641710}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion} ({#Flavour})
AppPublisher=LesionLens developers
AppComments=Offline decision support for clinicians reading dermoscopy images. Not a diagnosis, not for self-screening, not validated for clinical use.
PrivilegesRequired=lowest
DefaultDirName={autopf}\{#AppName}
DisableProgramGroupPage=yes
DisableDirPage=auto
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename={#AppName}-{#AppVersion}-windows-{#Flavour}-setup
SetupIconFile=..\..\resources\icons\lesionlens.ico
UninstallDisplayIcon={app}\LesionLens.exe
UninstallDisplayName={#AppName} {#AppVersion}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
; Close a running LesionLens (Restart Manager) before its files are replaced or removed.
CloseApplications=yes
RestartApplications=no

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[InstallDelete]
; An upgrade starts from an empty program folder: no stale file of an older version survives.
Type: filesandordirs; Name: "{app}\_internal"
Type: files; Name: "{app}\LesionLens.exe"
Type: files; Name: "{app}\lesionlens-cli.exe"

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\LesionLens.exe"; Comment: "Dermoscopy decision support (not a diagnosis)"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\LesionLens.exe"; Tasks: desktopicon

[Run]
Filename: "{app}\LesionLens.exe"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; Only the program folder. Settings (HKCU\Software\LesionLens) and reports stay.
Type: filesandordirs; Name: "{app}\_internal"

[Code]
// After copying: the installed app checks itself (bundled model, sample image, Grad-CAM, PDF
// report) without a window, as `lesionlens-cli.exe --self-test` does by hand.
procedure CurStepChanged(CurStep: TSetupStep);
var
  ResultCode: Integer;
begin
  if CurStep = ssPostInstall then
  begin
    if not Exec(ExpandConstant('{app}\lesionlens-cli.exe'), '--self-test --no-qt',
                ExpandConstant('{app}'), SW_HIDE, ewWaitUntilTerminated, ResultCode)
       or (ResultCode <> 0) then
      SuppressibleMsgBox('LesionLens was installed, but its self-test failed (exit code ' +
        IntToStr(ResultCode) + '). Open a command prompt in ' + ExpandConstant('{app}') +
        ' and run "lesionlens-cli.exe --self-test" to see why.', mbError, MB_OK, IDOK);
  end;
end;
